//! The committed CRD is what the Rust types generate, and it carries the schema rules that
//! DESIGN section 3 puts in the API server.

use serde_json::Value;

fn generated() -> Value {
    serde_json::to_value(taskrun::crd::definition()).expect("the CRD serializes")
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path)
        .unwrap_or_else(|| panic!("{path} missing from the CRD"))
}

const SPEC: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";

#[test]
fn committed_crd_is_up_to_date() {
    // The crate's directory from cargo at run time, not compiled in: cargo may reuse this
    // binary from a checkout at another path (one target dir per machine).
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let path = format!("{dir}/../{}", taskrun::crd::CRD_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let fresh = taskrun::crd::yaml().expect("the CRD renders");
    assert!(
        committed == fresh,
        "{} is stale or missing: run `make crd` and commit the result",
        taskrun::crd::CRD_PATH
    );
}

#[test]
fn markdown_files_is_a_list_map_keyed_by_filename() {
    let crd = generated();
    let files = at(&crd, &format!("{SPEC}/properties/markdownFiles"));
    assert_eq!(files["x-kubernetes-list-type"], "map");
    assert_eq!(
        files["x-kubernetes-list-map-keys"],
        serde_json::json!(["filename"])
    );
    assert_eq!(files["minItems"], 1);
    assert_eq!(files["maxItems"], 64);
    let filename = &files["items"]["properties"]["filename"];
    assert_eq!(filename["pattern"], r"^[A-Za-z0-9][A-Za-z0-9._-]*\.md$");
    assert_eq!(filename["maxLength"], 128);
}

/// The schema's bounds are the ones the validation functions apply.
#[test]
fn the_schema_bounds_are_the_validation_bounds() {
    use taskrun::limits::*;
    let crd = generated();
    let spec = at(&crd, &format!("{SPEC}/properties"));
    assert_eq!(spec["taskId"]["minimum"].as_f64(), Some(MIN_TASK_ID as f64));
    assert_eq!(
        spec["contextVersion"]["minimum"].as_f64(),
        Some(MIN_CONTEXT_VERSION as f64)
    );
    assert_eq!(spec["serviceName"]["maxLength"], MAX_SERVICE_NAME_LEN);
    assert_eq!(spec["agentName"]["maxLength"], MAX_AGENT_NAME_LEN);
    let files = &spec["markdownFiles"];
    assert_eq!(files["maxItems"], MAX_FILES);
    let file = &files["items"]["properties"];
    assert_eq!(file["filename"]["maxLength"], MAX_FILENAME_LEN);
    assert_eq!(file["content"]["maxLength"], MAX_CONTENT_LEN);
}

fn rules(v: &Value) -> Vec<String> {
    v["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn task_id_and_service_name_are_immutable_by_transition_rules() {
    let crd = generated();
    for field in ["taskId", "serviceName"] {
        let schema = at(&crd, &format!("{SPEC}/properties/{field}"));
        assert_eq!(rules(schema), ["self == oldSelf"], "{field}");
    }
}

#[test]
fn context_version_never_goes_down_and_defaults_to_one() {
    let crd = generated();
    let schema = at(&crd, &format!("{SPEC}/properties/contextVersion"));
    assert_eq!(rules(schema), ["self >= oldSelf"]);
    assert_eq!(schema["default"], 1);
    assert_eq!(schema["minimum"].as_f64(), Some(1.0));
}

/// Evaluates a messageExpression of the one shape the transition rules' messages use: a
/// string literal with `%d`/`%s` placeholders, formatted with a list of `self`/`oldSelf`.
fn formatted(expr: &str, old: &str, new: &str) -> String {
    let (template, args) = expr
        .strip_prefix('\'')
        .and_then(|e| e.strip_suffix("])"))
        .and_then(|e| e.split_once("'.format(["))
        .unwrap_or_else(|| panic!("not 'literal'.format([...]): {expr}"));
    let mut out = template.to_owned();
    for arg in args.split(", ") {
        let value = match arg {
            "self" => new,
            "oldSelf" => old,
            other => panic!("unexpected argument {other:?} in {expr}"),
        };
        let at = out
            .find('%')
            .unwrap_or_else(|| panic!("more arguments than placeholders: {expr}"));
        assert!(matches!(&out[at..at + 2], "%d" | "%s"), "{expr}");
        out.replace_range(at..at + 2, value);
    }
    assert!(
        !out.contains('%'),
        "more placeholders than arguments: {expr}"
    );
    out
}

/// The API server checks the transition rules before it calls the webhook, so theirs are the
/// messages users see: the same words as the webhook's, with both values, reason Forbidden.
#[test]
fn transition_messages_name_both_values_as_the_webhook_does() {
    use taskrun::validation::Reason;
    let crd = generated();
    let old = taskrun::TaskRunSpec {
        task_id: 7,
        service_name: "billing".into(),
        agent_name: None,
        context_version: 3,
        markdown_files: vec![taskrun::MarkdownFile {
            filename: "task.md".into(),
            content: "# Task".into(),
            file_type: None,
        }],
    };
    let cases = [
        ("taskId", ("7", "8"), {
            let mut new = old.clone();
            new.task_id = 8;
            new
        }),
        ("serviceName", ("billing", "payments"), {
            let mut new = old.clone();
            new.service_name = "payments".into();
            new
        }),
        ("contextVersion", ("3", "2"), {
            let mut new = old.clone();
            new.context_version = 2;
            new
        }),
    ];
    for (field, (was, now), new) in cases {
        let schema = at(&crd, &format!("{SPEC}/properties/{field}"));
        let rule = &schema["x-kubernetes-validations"][0];
        assert_eq!(rule["reason"], "FieldValueForbidden", "{field}");
        let expr = rule["messageExpression"]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: no messageExpression in {rule}"));
        let cel = formatted(expr, was, now);
        let webhook = taskrun::validate_update(&old, &new);
        assert_eq!(webhook.len(), 1, "{field}: {webhook:?}");
        assert_eq!(webhook[0].reason, Reason::Forbidden);
        assert_eq!(cel, webhook[0].message, "{field}");
        assert!(cel.contains(was) && cel.contains(now), "{cel}");
        assert!(!cel.contains('\n'), "a line break voids the message: {cel}");
    }
}

#[test]
fn content_must_have_a_visible_character_and_the_message_names_the_file() {
    let crd = generated();
    let item = at(&crd, &format!("{SPEC}/properties/markdownFiles/items"));
    let rule = &item["x-kubernetes-validations"][0];
    assert_eq!(rule["rule"], "self.content.trim() != ''");
    assert!(
        rule["messageExpression"]
            .as_str()
            .unwrap_or_default()
            .contains("self.filename")
    );
    assert_eq!(rule["fieldPath"], ".content");
}

#[test]
fn the_total_size_is_bounded_so_the_config_map_fits() {
    let crd = generated();
    let spec = at(&crd, SPEC);
    let total = rules(spec);
    assert_eq!(total.len(), 1);
    assert!(
        total[0].contains(&taskrun::limits::MAX_TOTAL_BYTES.to_string()),
        "{total:?}"
    );
    assert!(
        total[0].contains("size(bytes(f.content))"),
        "counts bytes: {total:?}"
    );
}

#[test]
fn names_subresource_and_columns() {
    let crd = generated();
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["tr"])
    );
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["versions"][0]["subresources"]["status"],
        serde_json::json!({})
    );
    let columns: Vec<(String, i64)> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("Task", 0),
        ("Service", 0),
        ("Version", 0),
        ("Phase", 0),
        ("Age", 0),
        ("Job", 1),
    ];
    assert_eq!(columns, expected.map(|(n, p)| (n.to_owned(), p)));
}

#[test]
fn every_spec_field_is_documented() {
    let crd = generated();
    let props = at(&crd, &format!("{SPEC}/properties"))
        .as_object()
        .expect("properties");
    for (name, schema) in props {
        assert!(
            schema["description"].is_string(),
            "spec.{name} has no description"
        );
    }
    let item = at(
        &crd,
        &format!("{SPEC}/properties/markdownFiles/items/properties"),
    );
    for (name, schema) in item.as_object().expect("item properties") {
        assert!(
            schema["description"].is_string(),
            "markdownFiles[].{name} has no description"
        );
    }
}

/// Every string `description` in `v`, at any depth, with its JSON pointer.
fn descriptions<'a>(v: &'a Value, path: &str, found: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{path}/{key}");
                match (key.as_str(), child) {
                    ("description", Value::String(text)) => found.push((here, text)),
                    _ => descriptions(child, &here, found),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                descriptions(child, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// No description keeps the line breaks of the wrapped doc comments it came from: `kubectl
/// explain` would print them verbatim. A blank line between paragraphs is not one of them.
#[test]
fn descriptions_have_no_hard_line_breaks() {
    let yaml = taskrun::crd::yaml().expect("the CRD renders");
    let crd: Value = serde_yaml_ng::from_str(&yaml).expect("the CRD parses");
    let mut found = Vec::new();
    descriptions(&crd, "", &mut found);
    // The walk reaches nested schemas: array items, and the conditions' own properties.
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    for nested in [
        "/properties/markdownFiles/items/properties/filename/description",
        "/properties/conditions/items/properties/lastTransitionTime/description",
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(nested)),
            "{nested} not walked: {paths:#?}"
        );
    }
    for (path, text) in found {
        assert!(
            text.split("\n\n")
                .all(|paragraph| !paragraph.contains('\n')),
            "{path} has a hard line break: {text:?}"
        );
    }
}

/// The schema's patterns accept exactly what the validation functions accept: kubectl and
/// GitOps tools see the schema's verdict first, the webhook and `kubectl taskrun` the
/// functions'. The API server's regexes (Go's RE2) and Rust's `regex` agree on these.
mod patterns_agree {
    use proptest::prelude::*;
    use serde_json::Value;
    use taskrun::names::is_dns1123_label;
    use taskrun::validation::is_valid_filename;

    /// What the schema of a string property accepts: its pattern and its maxLength.
    fn schema_accepts(property: &Value, s: &str) -> bool {
        let pattern = property["pattern"].as_str().expect("a pattern");
        let max = property["maxLength"].as_u64().expect("a maxLength");
        regex::Regex::new(pattern)
            .expect("a valid pattern")
            .is_match(s)
            && s.chars().count() as u64 <= max
    }

    fn property(path: &str) -> Value {
        let crd = super::generated();
        super::at(&crd, &format!("{}{path}", super::SPEC)).clone()
    }

    /// A name the schema and the functions both take for a label (serviceName, agentName).
    fn label_ok(s: &str, max: usize) -> bool {
        s.len() <= max && is_dns1123_label(s)
    }

    fn check(s: &str) {
        use taskrun::limits::{MAX_AGENT_NAME_LEN, MAX_SERVICE_NAME_LEN};
        let service = property("/properties/serviceName");
        let agent = property("/properties/agentName");
        let filename = property("/properties/markdownFiles/items/properties/filename");
        assert_eq!(
            schema_accepts(&service, s),
            label_ok(s, MAX_SERVICE_NAME_LEN),
            "serviceName {s:?}"
        );
        assert_eq!(
            schema_accepts(&agent, s),
            label_ok(s, MAX_AGENT_NAME_LEN),
            "agentName {s:?}"
        );
        assert_eq!(
            schema_accepts(&filename, s),
            is_valid_filename(s),
            "filename {s:?}"
        );
    }

    #[test]
    fn on_the_edges() {
        let long_label = "a".repeat(64);
        let long_file = format!("{}.md", "a".repeat(126));
        for s in [
            "",
            "a",
            "a-",
            "-a",
            "a-b",
            "A",
            "a.b",
            "a_b",
            "0",
            "x.md",
            ".md",
            "a.md\n",
            "\na.md",
            "a.MD",
            "é.md",
            "a b.md",
            "a..md",
            "-a.md",
            "_a.md",
            "a\u{0}.md",
            &long_label,
            &long_label[1..],
            &long_file,
            &long_file[1..],
        ] {
            check(s);
        }
    }

    proptest! {
        #[test]
        fn on_any_short_string(s in "[a-zA-Z0-9._ \n-]{0,12}(\\.md)?") {
            check(&s);
        }
    }
}
