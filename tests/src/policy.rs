//! Requests the real API server refuses for a while: a ValidatingAdmissionPolicy bound to one
//! namespace, as a quota or another team's admission policy would refuse them.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// A policy and its binding, both named `name`; in force until `lift`.
pub struct Refusal {
    name: String,
    policies: Api<ValidatingAdmissionPolicy>,
    bindings: Api<ValidatingAdmissionPolicyBinding>,
}

impl Refusal {
    /// Refuses every request in namespace `ns` that `rule` (one of `matchConstraints`'
    /// resourceRules) matches, with `message`. The API server applies it a moment later: the
    /// caller waits until a request is refused.
    pub async fn start(client: &Client, ns: &str, rule: serde_json::Value, message: &str) -> Self {
        let name = format!("refuse-{ns}");
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let policy = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [rule]},
                "validations": [{"expression": "false", "message": message, "reason": "Forbidden"}],
            },
        }))
        .expect("a policy");
        let binding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            },
        }))
        .expect("a binding");
        let params = PostParams::default();
        policies
            .create(&params, &policy)
            .await
            .expect("create the policy");
        bindings
            .create(&params, &binding)
            .await
            .expect("bind the policy");
        Refusal {
            name,
            policies,
            bindings,
        }
    }

    pub async fn lift(self) {
        let params = DeleteParams::default();
        self.bindings
            .delete(&self.name, &params)
            .await
            .expect("unbind the policy");
        self.policies
            .delete(&self.name, &params)
            .await
            .expect("delete the policy");
    }
}
