use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;

/// An index as a plain map: identity -> holders (name, terminating).
#[derive(Default)]
struct Fake(HashMap<Identity, Vec<(String, bool)>>);

impl Fake {
    fn holding(ns: &str, service: &str, task: i64, name: &str) -> Self {
        let mut f = Fake::default();
        f.0.insert(Identity::new(ns, service, task), vec![(name.into(), false)]);
        f
    }
}

impl Duplicates for Fake {
    fn holder(
        &self,
        identity: &Identity,
        name: &str,
        _claim: bool,
    ) -> Result<Option<HeldBy>, NotSynced> {
        let Some(holders) = self.0.get(identity) else {
            return Ok(None);
        };
        Ok(taskrun::find_duplicate(
            name,
            holders.iter().map(|(n, t)| taskrun::Existing {
                name: n,
                terminating: *t,
                ..taskrun::Existing::default()
            }),
        )
        .map(|n| HeldBy::Stored(n.to_owned())))
    }
}

/// An index before its first list: it cannot say who holds what.
struct Unsynced;

impl Duplicates for Unsynced {
    fn holder(&self, _: &Identity, _: &str, _: bool) -> Result<Option<HeldBy>, NotSynced> {
        Err(NotSynced)
    }
}

fn taskrun(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
        "metadata": {"name": name, "namespace": "team-a",
                     "labels": {"app.kubernetes.io/instance": "argo"}},
        "spec": spec
    })
}

fn spec() -> Value {
    json!({
        "taskId": 42, "serviceName": "billing", "contextVersion": 1,
        "markdownFiles": [
            {"filename": "task.md", "content": "# Do it", "fileType": "task"},
            {"filename": "notes.md", "content": "more"}
        ]
    })
}

fn review(op: &str, object: Option<Value>, old: Option<Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
            "resource": {"group": "orchestrator.io", "version": "v1", "resource": "taskruns"},
            "name": "t1", "namespace": "team-a", "operation": op,
            "userInfo": {"username": "alice"},
            "object": object, "oldObject": old, "dryRun": false
        }
    })
}

fn create(spec: Value) -> Value {
    review("CREATE", Some(taskrun("t1", spec)), None)
}

fn update(old: Value, new: Value) -> Value {
    review("UPDATE", Some(taskrun("t1", new)), Some(taskrun("t1", old)))
}

/// Calls the hook and returns the answer and its decoded `response`.
fn call(hook: Hook, body: &Value, index: &dyn Duplicates) -> (Answer, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let answer = admit(hook, &bytes, index);
    let json: Value = serde_json::from_slice(&answer.body).expect("answer is JSON");
    let response = json.get("response").cloned().unwrap_or(json);
    (answer, response)
}

fn validate(body: &Value) -> (Answer, Value) {
    call(Hook::Validate, body, &Fake::default())
}

fn message(r: &Value) -> &str {
    r["status"]["message"].as_str().unwrap_or_default()
}

#[test]
fn a_valid_create_is_allowed_and_the_uid_echoed() {
    let (answer, r) = validate(&create(spec()));
    assert_eq!(answer.http_status, 200);
    assert_eq!(answer.outcome, Outcome::allowed);
    assert_eq!(answer.operation, "CREATE");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let bytes = serde_json::to_vec(&create(spec())).expect("json");
    let whole: Value =
        serde_json::from_slice(&admit(Hook::Validate, &bytes, &Fake::default()).body)
            .expect("json");
    assert_eq!(whole["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(whole["kind"], "AdmissionReview");
}

#[test]
fn an_unsynced_index_fails_a_valid_create_but_an_invalid_one_is_told_what_is_wrong() {
    let (answer, _) = call(Hook::Validate, &create(spec()), &Unsynced);
    assert_eq!(answer.http_status, 503);
    assert!(answer.message.contains("not synced"), "{}", answer.message);

    let mut s = spec();
    s["taskId"] = json!(0);
    let (answer, r) = call(Hook::Validate, &create(s), &Unsynced);
    assert_eq!(answer.http_status, 200);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 422);
    assert!(message(&r).contains("spec.taskId"), "{r}");
}

#[test]
fn an_empty_file_list_is_denied_as_invalid() {
    let mut s = spec();
    s["markdownFiles"] = json!([]);
    let (answer, r) = validate(&create(s));
    assert_eq!(answer.outcome, Outcome::denied);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 422);
    assert_eq!(r["status"]["reason"], "Invalid");
    assert!(
        message(&r).contains("spec.markdownFiles: markdownFiles is empty"),
        "{r}"
    );
    assert_eq!(
        r["status"]["details"]["causes"][0]["field"],
        "spec.markdownFiles"
    );
}

/// A list far beyond the limit (what the schema's maxItems would refuse, had it run yet) is
/// refused for its number, without every entry being kept.
#[test]
fn too_many_files_are_denied_as_too_many() {
    let mut s = spec();
    s["markdownFiles"] = (0..10_000)
        .map(|i| json!({"filename": format!("f{i}.md"), "content": "x"}))
        .collect();
    let (answer, r) = validate(&create(s));
    assert_eq!(answer.outcome, Outcome::denied);
    assert_eq!(r["status"]["code"], 422);
    assert_eq!(
        r["status"]["details"]["causes"][0]["reason"],
        "FieldValueTooMany"
    );
    assert!(
        message(&r).contains("at most 64 are allowed"),
        "{}",
        message(&r)
    );
}

#[test]
fn a_whitespace_only_file_is_named() {
    let mut s = spec();
    s["markdownFiles"][1]["content"] = json!(" \n\t ");
    let (_, r) = validate(&create(s));
    assert_eq!(r["status"]["code"], 422);
    assert!(
        message(&r).contains("\"notes.md\" is empty or only whitespace"),
        "{r}"
    );
    assert_eq!(
        r["status"]["details"]["causes"][0]["field"],
        "spec.markdownFiles[1].content"
    );
}

#[test]
fn every_violation_is_listed() {
    let mut s = spec();
    s["markdownFiles"][0]["filename"] = json!("../task.txt");
    s["markdownFiles"][1]["content"] = json!("");
    s["contextVersion"] = json!(0);
    let (_, r) = validate(&create(s));
    let causes = r["status"]["details"]["causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 3, "{r}");
    for field in [
        "spec.contextVersion",
        "spec.markdownFiles[0].filename",
        "spec.markdownFiles[1].content",
    ] {
        assert!(message(&r).contains(field), "{field} missing: {r}");
    }
}

#[test]
fn a_duplicate_names_the_existing_taskrun_and_what_to_do() {
    let index = Fake::holding("team-a", "billing", 42, "original");
    let (answer, r) = call(Hook::Validate, &create(spec()), &index);
    assert_eq!(answer.outcome, Outcome::denied);
    assert_eq!(r["status"]["code"], 409);
    assert_eq!(r["status"]["reason"], "Conflict");
    let m = message(&r);
    assert!(
        m.contains("TaskRun team-a/original already holds task 42 of service billing"),
        "{m}"
    );
    assert!(
        m.contains("kubectl taskrun context add original -n team-a -f FILE.md"),
        "{m}"
    );
    assert!(
        m.contains("kubectl delete taskrun original -n team-a"),
        "{m}"
    );
    // A rename in git: GitOps tools create the new name before they prune the old.
    assert!(
        m.ends_with(
            "renamed in git? Flux and Argo CD's PruneLast create the new name before they \
             prune the old, so delete original first)"
        ),
        "{m}"
    );
}

#[test]
fn a_duplicate_with_other_problems_lists_them_all() {
    let index = Fake::holding("team-a", "billing", 42, "original");
    let mut s = spec();
    s["markdownFiles"][1]["content"] = json!("   ");
    let (_, r) = call(Hook::Validate, &create(s), &index);
    assert_eq!(r["status"]["code"], 409);
    assert_eq!(
        r["status"]["details"]["causes"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(message(&r).contains("\"notes.md\""), "{r}");
}

#[test]
fn not_a_duplicate_of_itself_elsewhere_or_of_a_terminating_holder() {
    let same_name = Fake::holding("team-a", "billing", 42, "t1");
    assert_eq!(
        call(Hook::Validate, &create(spec()), &same_name).1["allowed"],
        true
    );
    let other_ns = Fake::holding("team-b", "billing", 42, "original");
    assert_eq!(
        call(Hook::Validate, &create(spec()), &other_ns).1["allowed"],
        true
    );
    let other_service = Fake::holding("team-a", "payments", 42, "original");
    assert_eq!(
        call(Hook::Validate, &create(spec()), &other_service).1["allowed"],
        true
    );
    let mut going = Fake::default();
    going.0.insert(
        Identity::new("team-a", "billing", 42),
        vec![("original".into(), true)],
    );
    assert_eq!(
        call(Hook::Validate, &create(spec()), &going).1["allowed"],
        true
    );
}

/// The webhook's own index, synced and empty.
fn synced_index() -> crate::index::Index {
    let index = crate::index::Index::default();
    index.init();
    index.init_done();
    index
}

fn create_named(name: &str, spec: Value) -> Value {
    let mut body = review("CREATE", Some(taskrun(name, spec)), None);
    body["request"]["name"] = json!(name);
    body
}

#[test]
fn of_two_creates_of_one_task_at_once_the_second_is_a_duplicate_of_the_first() {
    let index = synced_index();
    // Neither a dry run nor an invalid create holds the task.
    let mut dry = create_named("dry", spec());
    dry["request"]["dryRun"] = json!(true);
    assert_eq!(call(Hook::Validate, &dry, &index).1["allowed"], true);
    let mut invalid = spec();
    invalid["markdownFiles"][1]["content"] = json!(" ");
    let invalid = create_named("invalid", invalid);
    assert_eq!(call(Hook::Validate, &invalid, &index).1["allowed"], false);

    let first = create_named("first", spec());
    assert_eq!(call(Hook::Validate, &first, &index).1["allowed"], true);
    // The watch has not shown "first" yet.
    let (answer, r) = call(Hook::Validate, &create_named("second", spec()), &index);
    assert_eq!(answer.outcome, Outcome::denied);
    assert_eq!(r["status"]["code"], 409);
    assert!(
        message(&r).starts_with("TaskRun team-a/first of task 42 of service billing in namespace team-a was allowed a moment ago"),
        "{r}"
    );
    // A retry of the first create (its answer lost, say) is still allowed.
    assert_eq!(call(Hook::Validate, &first, &index).1["allowed"], true);
    // Once the watch shows it, the index names it as any holder.
    index.apply(crate::index::Entry {
        identity: Identity::new("team-a", "billing", 42),
        name: "first".into(),
        terminating: false,
        has_run: false,
        created: Some(1),
        uid: "u1".into(),
    });
    let (_, r) = call(Hook::Validate, &create_named("second", spec()), &index);
    assert!(
        message(&r).starts_with("TaskRun team-a/first already holds"),
        "{r}"
    );
}

#[test]
fn dry_run_gets_the_same_answer() {
    let index = Fake::holding("team-a", "billing", 42, "original");
    let mut body = create(spec());
    body["request"]["dryRun"] = json!(true);
    let (answer, r) = call(Hook::Validate, &body, &index);
    assert!(answer.dry_run);
    assert_eq!(r["status"]["code"], 409);
}

#[test]
fn immutable_fields_and_a_lower_version_are_denied_on_update() {
    let mut new = spec();
    new["taskId"] = json!(43);
    let (_, r) = validate(&update(spec(), new));
    assert_eq!(r["status"]["code"], 422);
    assert!(
        message(&r).contains("taskId is immutable (was 42, now 43)"),
        "{r}"
    );

    let mut old = spec();
    old["contextVersion"] = json!(3);
    let mut new = old.clone();
    new["contextVersion"] = json!(2);
    new["serviceName"] = json!("payments");
    let (_, r) = validate(&update(old, new));
    assert!(
        message(&r).contains("contextVersion may not decrease"),
        "{r}"
    );
    assert!(message(&r).contains("serviceName is immutable"), "{r}");

    let mut new = spec();
    new["markdownFiles"] = json!([]);
    let (_, r) = validate(&update(spec(), new));
    assert!(message(&r).contains("spec.markdownFiles"), "{r}");
}

#[test]
fn an_unchanged_update_is_always_allowed() {
    // Even an object that breaks a rule added after it was created.
    let mut s = spec();
    s["markdownFiles"][1]["content"] = json!(" ");
    let (answer, r) = validate(&update(s.clone(), s));
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(answer.operation, "UPDATE");
    assert!(r.get("warnings").is_none());
}

#[test]
fn updates_that_probably_miss_something_get_warnings() {
    let mut raised = spec();
    raised["contextVersion"] = json!(2);
    let (_, r) = validate(&update(spec(), raised));
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("without new or changed")),
        "{r}"
    );

    let mut changed = spec();
    changed["markdownFiles"][0]["content"] = json!("# Do it differently");
    let (_, r) = validate(&update(spec(), changed));
    assert!(
        r["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("contextVersion is still 1")),
        "{r}"
    );

    // A file gone at the same version: what a client-side re-apply does to a file added with
    // `kubectl taskrun context add`. Named, with what happened and what to do.
    let mut dropped = spec();
    if let Some(files) = dropped["markdownFiles"].as_array_mut() {
        files.pop();
    }
    let (_, r) = validate(&update(spec(), dropped));
    let warning = r["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("no longer has \"notes.md\" at contextVersion 1")
            && warning.contains("client-side apply")
            && warning.contains("server-side")
            && !warning.contains("raise it"),
        "{r}"
    );

    let mut both = spec();
    both["contextVersion"] = json!(2);
    if let Some(files) = both["markdownFiles"].as_array_mut() {
        files.push(json!({"filename": "context-2.md", "content": "new"}));
    }
    let (_, r) = validate(&update(spec(), both));
    assert!(r.get("warnings").is_none(), "{r}");

    // A file gone with a raise (a manifest bumped in git and applied client-side): the new
    // run goes without it, and says so.
    let mut raised_without = spec();
    raised_without["contextVersion"] = json!(2);
    if let Some(files) = raised_without["markdownFiles"].as_array_mut() {
        files.pop();
        files.push(json!({"filename": "context-2.md", "content": "new"}));
    }
    let (_, r) = validate(&update(spec(), raised_without));
    assert_eq!(r["allowed"], true);
    let warnings = r["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{r}");
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(
        warning.contains("no longer has \"notes.md\" that contextVersion 1 had")
            && warning.contains("the run at contextVersion 2 goes without them")
            && warning.contains("server-side"),
        "{r}"
    );
}

#[test]
fn deletes_and_status_writes_are_allowed_untouched() {
    let (_, r) = validate(&review("DELETE", None, Some(taskrun("t1", spec()))));
    assert_eq!(r["allowed"], true);
    let mut bad = spec();
    bad["markdownFiles"] = json!([]);
    let mut status = update(spec(), bad);
    status["request"]["subResource"] = json!("status");
    assert_eq!(validate(&status).1["allowed"], true);
    assert!(
        call(Hook::Mutate, &status, &Fake::default())
            .1
            .get("patch")
            .is_none()
    );
}

#[test]
fn other_resources_are_refused_not_processed() {
    let mut body = create(spec());
    body["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
    let (answer, r) = validate(&body);
    assert_eq!(answer.http_status, 200);
    assert_eq!(answer.outcome, Outcome::error);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["status"]["code"], 400);
    assert!(
        message(&r).contains("admits only taskruns.orchestrator.io/v1, but was sent pods./v1"),
        "{r}"
    );
}

#[test]
fn bodies_that_are_no_admission_review_get_a_400_status() {
    let nested = format!(r#"{{"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let wrong_version = {
        let mut b = create(spec());
        b["apiVersion"] = json!("admission.k8s.io/v1beta1");
        serde_json::to_string(&b).expect("json")
    };
    let cases: [(&str, &str); 6] = [
        ("", "EOF"),
        ("not json", "not an admission.k8s.io/v1 AdmissionReview"),
        ("{}", "apiVersion"),
        // Skipped, not recursed into: no stack overflow, and still no review.
        (&nested, "missing field `apiVersion`"),
        (&wrong_version, "admissionReviewVersions"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no request",
        ),
    ];
    for (body, expect) in cases {
        let answer = admit(Hook::Validate, body.as_bytes(), &Fake::default());
        assert_eq!(answer.http_status, 400, "{expect}");
        assert_eq!(answer.outcome, Outcome::error);
        let status: Value = serde_json::from_slice(&answer.body).expect("a JSON Status");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], 400);
        let m = status["message"].as_str().unwrap_or_default();
        assert!(m.contains(expect), "{expect:?} not in {m:?}");
    }
}

#[test]
fn an_unreadable_spec_is_denied_by_validate_and_left_to_the_schema_by_mutate() {
    let body = create(json!({"taskId": "forty-two"}));
    let (_, r) = validate(&body);
    assert_eq!(r["status"]["code"], 422);
    assert!(message(&r).contains("spec: the spec cannot be read"), "{r}");
    let (answer, r) = call(Hook::Mutate, &body, &Fake::default());
    assert_eq!(answer.outcome, Outcome::allowed);
    assert!(r.get("patch").is_none());
}

/// A spec this binary cannot read (a field whose shape a newer CRD changed) does not block
/// updates that leave the spec as it was (an annotation, a finalizer removed), and still
/// blocks those that change it.
#[test]
fn an_unreadable_spec_left_unchanged_does_not_block_an_update() {
    let mut newer = spec();
    newer["markdownFiles"][0]["content"] = json!({"inline": "# Do it"});
    let old = taskrun("t1", newer.clone());
    let mut annotated = old.clone();
    annotated["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": "1"});
    let (answer, r) = validate(&review("UPDATE", Some(annotated), Some(old.clone())));
    assert_eq!(answer.outcome, Outcome::allowed);
    assert_eq!(r["allowed"], true, "{r}");

    let mut changed = newer;
    changed["markdownFiles"][1]["content"] = json!("changed");
    let (_, r) = validate(&review("UPDATE", Some(taskrun("t1", changed)), Some(old)));
    assert_eq!(r["status"]["code"], 422);
    // Says what is wrong and what to do, without the review body's line and column.
    let m = message(&r);
    assert!(
        m.contains("spec: the spec cannot be read as a TaskRun spec (invalid type: map")
            && m.contains("upgrade the webhook")
            && !m.contains(" at line "),
        "{r}"
    );
}

/// A fileType this binary does not know reached the webhook through the CRD's schema, so
/// the installed CRD allows it (a newer one): it is judged like any other and kept as written.
#[test]
fn a_file_type_newer_than_the_webhook_is_admitted() {
    let mut newer = spec();
    newer["markdownFiles"][0]["fileType"] = json!("rubric");
    let (answer, r) = validate(&create(newer.clone()));
    assert_eq!(answer.outcome, Outcome::allowed, "{r}");
    let mut changed = newer.clone();
    changed["markdownFiles"][1]["content"] = json!("changed");
    changed["contextVersion"] = json!(2);
    let (answer, r) = validate(&review(
        "UPDATE",
        Some(taskrun("t1", changed)),
        Some(taskrun("t1", newer.clone())),
    ));
    assert_eq!(answer.outcome, Outcome::allowed, "{r}");
    newer["markdownFiles"][1]["content"] = json!(" ");
    let (_, r) = validate(&create(newer));
    assert_eq!(r["status"]["code"], 422, "still judged: {r}");
}

/// The patch as the API server would decode it (kube writes the bytes as a JSON array).
fn patch_of(r: &Value) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = serde_json::from_value(r.get("patch")?.clone()).expect("bytes");
    Some(serde_json::from_slice(&bytes).expect("a JSON patch"))
}

#[test]
fn mutate_stamps_the_labels_and_the_finalizer_and_nothing_else_once() {
    let mut s = spec();
    s["agentName"] = json!("claude");
    let body = create(s.clone());
    let (answer, r) = call(Hook::Mutate, &body, &Fake::default());
    assert_eq!(answer.outcome, Outcome::allowed);
    assert_eq!(r["patchType"], "JSONPatch");
    let patch = patch_of(&r).expect("a patch");
    let mut object = taskrun("t1", s.clone());
    json_patch::patch(&mut object, &patch).expect("applies");
    assert_eq!(
        object["metadata"]["labels"],
        json!({
            "app.kubernetes.io/instance": "argo",
            "orchestrator.io/task-id": "42",
            "orchestrator.io/service-name": "billing",
            "orchestrator.io/context-version": "1",
            "orchestrator.io/agent-name": "claude"
        })
    );
    assert_eq!(
        object["metadata"]["finalizers"],
        json!([taskrun::FINALIZER])
    );
    let mut rest = object.clone();
    for stamped in ["labels", "finalizers"] {
        rest["metadata"].as_object_mut().map(|m| m.remove(stamped));
    }
    let mut untouched = taskrun("t1", s);
    untouched["metadata"]
        .as_object_mut()
        .map(|m| m.remove("labels"));
    assert_eq!(rest, untouched);
    // Second pass: nothing to do.
    let again = review("CREATE", Some(object), None);
    let (_, r) = call(Hook::Mutate, &again, &Fake::default());
    assert_eq!(r["allowed"], true);
    assert!(patch_of(&r).is_none(), "{r}");
}

#[test]
fn mutate_adds_a_labels_map_when_there_is_none() {
    let mut object = taskrun("t1", spec());
    object["metadata"]
        .as_object_mut()
        .map(|m| m.remove("labels"));
    let (_, r) = call(
        Hook::Mutate,
        &review("UPDATE", Some(object.clone()), Some(object.clone())),
        &Fake::default(),
    );
    let patch = patch_of(&r).expect("a patch");
    json_patch::patch(&mut object, &patch).expect("applies");
    assert_eq!(
        object["metadata"]["labels"]["orchestrator.io/task-id"],
        "42"
    );
}

/// The finalizer is stamped at creation only: one a user removed from a live TaskRun (to
/// uninstall without the controller, docs/install.md) stays removed.
#[test]
fn mutate_leaves_the_finalizers_of_an_update_alone() {
    let mut object = taskrun("t1", spec());
    let (_, r) = call(Hook::Mutate, &create(spec()), &Fake::default());
    json_patch::patch(&mut object, &patch_of(&r).expect("a patch")).expect("applies");
    object["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let (_, r) = call(
        Hook::Mutate,
        &review("UPDATE", Some(object.clone()), Some(object)),
        &Fake::default(),
    );
    assert_eq!(r["allowed"], true);
    assert!(patch_of(&r).is_none(), "{r}");
}

/// A manifest that carries one of the project's labels with a stale value is corrected, and
/// told so; a label the request did not carry is added without a word.
#[test]
fn mutate_warns_when_it_corrects_a_label_the_request_set() {
    // Stored with the right labels; the manifest applied carries a stale one.
    let mut stored = taskrun("t1", spec());
    let (_, r) = call(Hook::Mutate, &create(spec()), &Fake::default());
    json_patch::patch(&mut stored, &patch_of(&r).expect("a patch")).expect("applies");
    let mut object = stored.clone();
    object["metadata"]["labels"]["orchestrator.io/context-version"] = json!("0");
    let (_, r) = call(
        Hook::Mutate,
        &review("UPDATE", Some(object.clone()), Some(stored)),
        &Fake::default(),
    );
    let patch = patch_of(&r).expect("a patch");
    json_patch::patch(&mut object, &patch).expect("applies");
    assert_eq!(
        object["metadata"]["labels"]["orchestrator.io/context-version"],
        "1"
    );
    assert_eq!(
        r["warnings"],
        json!([
            "label orchestrator.io/context-version is set by the webhook from the spec, which undid this value; leave it out of manifests and label commands"
        ])
    );

    let (_, r) = call(Hook::Mutate, &create(spec()), &Fake::default());
    assert!(patch_of(&r).is_some());
    assert!(r.get("warnings").is_none(), "{r}");

    // A stored label the spec has moved past (contextVersion raised by an update that does not
    // touch the labels) is corrected without a word.
    let stored = object.clone();
    let mut raised = stored.clone();
    raised["spec"]["contextVersion"] = json!(2);
    let (_, r) = call(
        Hook::Mutate,
        &review("UPDATE", Some(raised), Some(stored)),
        &Fake::default(),
    );
    assert!(patch_of(&r).is_some());
    assert!(r.get("warnings").is_none(), "{r}");
}
