//! The CustomResourceDefinition generated from the Rust types, as committed in
//! `manifests/crd/taskruns.orchestrator.io.yaml`. `make crd` writes it; a test fails when
//! the committed file is stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;

use crate::TaskRun;

/// Where the generated CRD lives, relative to the repository root.
pub const CRD_PATH: &str = "manifests/crd/taskruns.orchestrator.io.yaml";

/// The CRD object, with field descriptions unwrapped: doc comments are wrapped at 100
/// columns in the source, and `kubectl explain` would print those line breaks verbatim.
pub fn definition() -> CustomResourceDefinition {
    let mut crd = TaskRun::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            unwrap_descriptions(schema);
        }
    }
    crd
}

fn unwrap_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(text) = schema.description.as_mut() {
        *text = unwrap(text);
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }));
    for child in children {
        unwrap_descriptions(child);
    }
}

/// Joins the lines of each paragraph; blank lines still separate paragraphs.
fn unwrap(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CRD as the YAML document committed under `manifests/`.
pub fn yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&definition())?;
    Ok(format!(
        "# Generated from shared/src/api.rs by `make crd`. Do not edit by hand.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrapped_lines_are_joined_and_paragraphs_kept() {
        assert_eq!(super::unwrap("one\ntwo\n\nthree"), "one two\n\nthree");
    }
}
