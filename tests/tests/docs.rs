//! The documentation against the code: every metric the docs name (README, DESIGN, docs/)
//! is one the webhook or the controller registers, so an alert or a dashboard written from
//! the docs finds its series; every reason the controller's conditions carry is listed.

use std::collections::BTreeSet;

use taskrun_tests::repo_root;

/// Every `taskrun_webhook_*` / `taskrun_controller_*` name in the docs, with where it is.
fn documented_metrics() -> Vec<(String, String)> {
    let root = repo_root();
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    let mut files: Vec<_> = docs.filter_map(|e| Some(e.ok()?.path())).collect();
    files.extend([root.join("README.md"), root.join("DESIGN.md")]);
    let mut names = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).expect("a doc");
        for (at, _) in text.match_indices("taskrun_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // A name ending in `_` is the prefix itself ("metrics start with ...").
            let metric =
                name.starts_with("taskrun_webhook_") || name.starts_with("taskrun_controller_");
            if metric && !name.ends_with('_') {
                names.push((name, file.display().to_string()));
            }
        }
    }
    names
}

/// The names in a Prometheus text exposition: each family from its `# TYPE` line, and its
/// series by the suffixes of its type.
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (family, kind) in exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
    {
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        names.insert(family.to_owned());
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// The webhook's metrics, every labelled family with a series (an empty one is not shown).
fn webhook_exposition() -> String {
    use taskrun_webhook::metrics::{Metrics, Outcome, RequestLabels, RouteLabels};
    let m = Metrics::default();
    m.requests
        .get_or_create(&RequestLabels {
            route: "validate",
            operation: "CREATE",
            result: Outcome::allowed,
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { route: "validate" })
        .observe(0.001);
    m.encode()
}

#[test]
fn every_metric_the_docs_name_is_served() {
    let mut served = served_names(&webhook_exposition());
    served.extend(served_names(
        &taskrun_controller::metrics::Metrics::default().render(None),
    ));
    for name in [
        "taskrun_webhook_requests_total",
        "taskrun_webhook_request_duration_seconds_bucket",
        "taskrun_controller_reconciles_total",
        "taskrun_controller_taskruns",
    ] {
        assert!(served.contains(name), "{name} not in {served:?}");
    }
    let documented = documented_metrics();
    assert!(documented.len() > 10, "{documented:?}");
    let unknown: Vec<_> = documented
        .iter()
        .filter(|(name, _)| !served.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "named in the docs but not served: {unknown:?}\nserved: {served:?}"
    );
}

/// The README's list of the reasons a TaskRun's conditions can carry is exactly the
/// controller's: none missing, none that the controller never sets.
#[test]
fn the_readme_lists_every_condition_reason() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let listed = readme
        .split_once("Reasons:")
        .map(|(_, rest)| rest.split("\n- ").next().unwrap_or_default())
        .expect("README has a list of reasons");
    // The code spans of the list that are one CamelCase word (the list goes on to quote
    // commands such as `kubectl wait ...`).
    let named: BTreeSet<&str> = listed
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with(char::is_uppercase) && w.chars().all(char::is_alphanumeric))
        .collect();
    let reasons: BTreeSet<&str> = taskrun_controller::status::reason::all().collect();
    assert_eq!(named, reasons, "README's reasons against the controller's");
}
