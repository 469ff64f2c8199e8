//! The CustomResourceDefinition generated from the Rust types, as committed in
//! `manifests/crd/taskruns.orchestrator.io.yaml`. `make crd` writes it; a test fails when
//! the committed file is stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::TaskRun;

/// Where the generated CRD lives, relative to the repository root.
pub const CRD_PATH: &str = "manifests/crd/taskruns.orchestrator.io.yaml";

/// The CRD object.
pub fn definition() -> CustomResourceDefinition {
    TaskRun::crd()
}

/// The CRD as the YAML document committed under `manifests/`.
pub fn yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&definition())?;
    Ok(format!(
        "# Generated from shared/src/api.rs by `make crd`. Do not edit by hand.\n{body}"
    ))
}
