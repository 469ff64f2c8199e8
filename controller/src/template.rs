//! The Job template: what every agent run looks like, from a YAML file and/or flags. Secrets
//! are only ever referenced (secretKeyRef / envFrom secretRef); their values are never read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::Deserialize;

/// Environment variable names the controller sets itself; the template may not override them.
pub const RESERVED_ENV: [&str; 5] = [
    "TASK_ID",
    "SERVICE_NAME",
    "AGENT_NAME",
    "CONTEXT_VERSION",
    "CONTEXT_DIR",
];

/// One environment variable taken from a key of a Secret.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretEnv {
    pub name: String,
    pub secret_key_ref: SecretKey,
}

/// A key of a Secret in the TaskRun's namespace.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub optional: Option<bool>,
}

/// Every variable of a Secret, as `envFrom: [{secretRef: {name}}]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSecret {
    pub secret_ref: SecretName,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretName {
    pub name: String,
    #[serde(default)]
    pub optional: Option<bool>,
}

/// The configurable part of every agent Job.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobTemplate {
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub env: Vec<SecretEnv>,
    #[serde(default)]
    pub env_from: Vec<EnvFromSecret>,
    #[serde(default)]
    pub backoff_limit: Option<i32>,
    #[serde(default)]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Where the markdown files are mounted (read-only).
    #[serde(default = "default_context_dir")]
    pub context_dir: String,
    /// The non-root user the agent runs as (Pod Security "restricted" needs a non-root user).
    #[serde(default = "default_user")]
    pub run_as_user: i64,
}

fn default_context_dir() -> String {
    "/context".to_owned()
}

fn default_user() -> i64 {
    65532
}

impl Default for JobTemplate {
    fn default() -> Self {
        Self {
            image: String::new(),
            image_pull_policy: None,
            command: Vec::new(),
            args: Vec::new(),
            resources: None,
            service_account_name: None,
            env: Vec::new(),
            env_from: Vec::new(),
            backoff_limit: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            context_dir: default_context_dir(),
            run_as_user: default_user(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the Job template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the Job template {path} is not valid YAML for a template: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("invalid Job template: {0}")]
    Invalid(String),
}

impl JobTemplate {
    /// Parses a template file's text.
    pub fn from_yaml(path: &str, text: &str) -> Result<Self, TemplateError> {
        serde_yaml_ng::from_str(text).map_err(|source| TemplateError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a template file.
    pub fn from_file(path: &str) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(path, &text)
    }

    /// Checks what the API server would only refuse per Job, so a bad template stops the
    /// controller at start instead of failing every TaskRun.
    pub fn validate(&self) -> Result<(), TemplateError> {
        let bad = |m: String| Err(TemplateError::Invalid(m));
        if self.image.trim().is_empty() {
            return bad("an image is required (--image or `image:` in the template file)".into());
        }
        if !self.context_dir.starts_with('/') || self.context_dir.len() < 2 {
            return bad(format!(
                "contextDir {:?} must be an absolute path other than /",
                self.context_dir
            ));
        }
        if self.run_as_user == 0 {
            return bad("runAsUser must not be 0: agent pods run as non-root".into());
        }
        let mut seen = BTreeMap::new();
        for e in &self.env {
            if RESERVED_ENV.contains(&e.name.as_str()) {
                return bad(format!(
                    "env {} is set by the controller and cannot come from a Secret",
                    e.name
                ));
            }
            if e.name.is_empty()
                || e.secret_key_ref.name.is_empty()
                || e.secret_key_ref.key.is_empty()
            {
                return bad(
                    "every env entry needs a name and a secretKeyRef with name and key".into(),
                );
            }
            if seen.insert(e.name.as_str(), ()).is_some() {
                return bad(format!("env {} is given twice", e.name));
            }
        }
        if self.env_from.iter().any(|e| e.secret_ref.name.is_empty()) {
            return bad("every envFrom entry needs secretRef.name".into());
        }
        if self.backoff_limit.is_some_and(|b| b < 0) {
            return bad("backoffLimit must be >= 0".into());
        }
        if self.active_deadline_seconds.is_some_and(|s| s <= 0) {
            return bad("activeDeadlineSeconds must be > 0".into());
        }
        if self.ttl_seconds_after_finished.is_some_and(|s| s < 0) {
            return bad("ttlSecondsAfterFinished must be >= 0".into());
        }
        Ok(())
    }
}

/// Parses `NAME=SECRET:KEY` (the `--secret-env` flag).
pub fn parse_secret_env(s: &str) -> Result<SecretEnv, String> {
    let (name, reference) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=SECRET:KEY"))?;
    let (secret, key) = reference
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected NAME=SECRET:KEY"))?;
    if name.is_empty() || secret.is_empty() || key.is_empty() {
        return Err(format!(
            "{s:?}: expected NAME=SECRET:KEY, all three non-empty"
        ));
    }
    Ok(SecretEnv {
        name: name.to_owned(),
        secret_key_ref: SecretKey {
            name: secret.to_owned(),
            key: key.to_owned(),
            optional: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_template_parses_and_is_valid() {
        let text = include_str!("../job-template.example.yaml");
        let t = JobTemplate::from_yaml("example", text).expect("example parses");
        t.validate().expect("example is valid");
        assert_eq!(t.env[0].secret_key_ref.name, "agent-secrets");
        assert_eq!(t.context_dir, "/context");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = JobTemplate::from_yaml("t", "image: x\nimmage: y\n").unwrap_err();
        assert!(err.to_string().contains("immage"), "{err}");
    }

    #[test]
    fn plain_env_values_cannot_be_given() {
        // Only Secret references: a literal value would put a secret into the Job spec.
        let err = JobTemplate::from_yaml(
            "t",
            "image: x\nenv: [{name: A, value: b, secretKeyRef: {name: s, key: k}}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("value"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = JobTemplate {
            image: "agent:1".into(),
            ..Default::default()
        };
        ok.validate().expect("minimal template is valid");
        let cases = [
            (
                JobTemplate {
                    image: " ".into(),
                    ..ok.clone()
                },
                "image",
            ),
            (
                JobTemplate {
                    context_dir: "rel".into(),
                    ..ok.clone()
                },
                "contextDir",
            ),
            (
                JobTemplate {
                    run_as_user: 0,
                    ..ok.clone()
                },
                "runAsUser",
            ),
            (
                JobTemplate {
                    backoff_limit: Some(-1),
                    ..ok.clone()
                },
                "backoffLimit",
            ),
            (
                JobTemplate {
                    active_deadline_seconds: Some(0),
                    ..ok.clone()
                },
                "activeDeadlineSeconds",
            ),
            (
                JobTemplate {
                    ttl_seconds_after_finished: Some(-1),
                    ..ok.clone()
                },
                "ttlSecondsAfterFinished",
            ),
            (
                JobTemplate {
                    env: vec![parse_secret_env("TASK_ID=s:k").expect("parses")],
                    ..ok.clone()
                },
                "TASK_ID",
            ),
            (
                JobTemplate {
                    env: vec![
                        parse_secret_env("A=s:k").expect("parses"),
                        parse_secret_env("A=s:j").expect("parses"),
                    ],
                    ..ok.clone()
                },
                "twice",
            ),
        ];
        for (t, needle) in cases {
            let err = t.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn secret_env_flag_syntax() {
        let e = parse_secret_env("API_KEY=agent-secrets:api-key").expect("parses");
        assert_eq!(e.name, "API_KEY");
        assert_eq!(e.secret_key_ref.name, "agent-secrets");
        assert_eq!(e.secret_key_ref.key, "api-key");
        for bad in ["API_KEY", "API_KEY=secret", "=s:k", "A=:k", "A=s:"] {
            assert!(parse_secret_env(bad).is_err(), "{bad}");
        }
    }
}
