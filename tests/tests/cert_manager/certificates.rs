//! cert-manager's resources as the test reads and pokes them: renewal, revisions, the
//! injected caBundles, the Secret's files.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::{SERVING, SYSTEM_NS, WEBHOOK_CONFIG};

/// What `cmctl renew` does to the Certificate `name`: set its Issuing condition to True
/// (reason ManuallyTriggered) through the status subresource; cert-manager then issues a
/// new revision.
pub(crate) async fn force_renewal(client: kube::Client, name: &str) {
    let certificates = certificates(client);
    let mut certificate = certificates
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Certificate {name}: {e}"));
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = certificate
        .data
        .get_mut("status")
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("Certificate {name} has no status"));
    let conditions = status
        .entry("conditions")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap_or_else(|| panic!("Certificate {name}: conditions is not a list"));
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance manually triggered",
        "lastTransitionTime": now,
    }));
    certificates
        .replace_status(name, &PostParams::default(), &certificate)
        .await
        .unwrap_or_else(|e| panic!("cannot trigger the renewal of {name}: {e}"));
}

/// The serving Certificate's revision.
pub(crate) async fn certificate_revision(client: kube::Client) -> Option<i64> {
    let certificate = certificates(client).get(SERVING).await.ok()?;
    certificate.data["status"]["revision"].as_i64()
}

pub(crate) fn certificates(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    Api::namespaced_with(client, SYSTEM_NS, &resource)
}

/// Some(()) when every webhook of both configurations carries exactly `ca_pem`.
pub(crate) async fn ca_bundles_are(client: kube::Client, ca_pem: Vec<u8>) -> Option<()> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK_CONFIG)
        .await
        .ok()?;
    let mutating = Api::<MutatingWebhookConfiguration>::all(client)
        .get(WEBHOOK_CONFIG)
        .await
        .ok()?;
    let bundles: Vec<Option<Vec<u8>>> = validating
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
        .chain(
            mutating
                .webhooks
                .iter()
                .flatten()
                .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone())),
        )
        .collect();
    (bundles.len() == 2 && bundles.iter().all(|b| b.as_deref() == Some(&ca_pem))).then_some(())
}

pub(crate) fn secret_files(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// The DER of the first certificate in a PEM bundle.
pub(crate) fn first_der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .unwrap_or_else(|| panic!("no certificate in {}", String::from_utf8_lossy(pem)))
}
