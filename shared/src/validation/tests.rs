use super::*;
use crate::FileType;
use proptest::prelude::*;

fn file(name: &str, content: &str) -> MarkdownFile {
    MarkdownFile {
        filename: name.into(),
        content: content.into(),
        file_type: Some(FileType::Task),
    }
}

fn valid() -> TaskRunSpec {
    TaskRunSpec {
        task_id: 1,
        service_name: "billing".into(),
        agent_name: Some("claude".into()),
        context_version: 1,
        markdown_files: vec![
            file("task.md", "# Do the thing"),
            file("design.md", "details"),
        ],
    }
}

fn fields(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

#[test]
fn a_valid_spec_has_no_violations() {
    assert_eq!(validate_create(&valid()), vec![]);
}

#[test]
fn task_id_must_be_positive() {
    let mut s = valid();
    s.task_id = 0;
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.taskId"]);
    assert!(v[0].message.contains("at least 1"), "{}", v[0]);
}

#[test]
fn service_name_must_be_a_short_dns_label() {
    for bad in [
        "",
        "Billing",
        "bill_ing",
        "-billing",
        "billing-",
        &"a".repeat(41),
    ] {
        let mut s = valid();
        s.service_name = bad.into();
        let v = validate_create(&s);
        assert_eq!(fields(&v), ["spec.serviceName"], "{bad:?}");
        let hint = match bad.len() {
            0 => "serviceName is required",
            41 => "at most 40 characters, got 41",
            _ => "must be a DNS-1123 label: lowercase letters, digits and '-'",
        };
        assert!(v[0].message.contains(hint), "{bad:?}: {}", v[0]);
    }
    let mut s = valid();
    s.service_name = "a".repeat(40);
    assert_eq!(validate_create(&s), vec![]);
}

#[test]
fn agent_name_must_be_a_dns_label_when_set() {
    let mut s = valid();
    s.agent_name = Some("Claude Code".into());
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.agentName"]);
    assert!(
        v[0].message
            .starts_with("agentName \"Claude Code\" must be a DNS-1123 label")
            && v[0].message.ends_with("or leave it out"),
        "{}",
        v[0]
    );
    s.agent_name = None;
    assert_eq!(validate_create(&s), vec![]);
}

#[test]
fn context_version_must_be_positive() {
    let mut s = valid();
    s.context_version = 0;
    assert_eq!(fields(&validate_create(&s)), ["spec.contextVersion"]);
}

#[test]
fn an_empty_file_list_is_refused_with_a_hint() {
    let mut s = valid();
    s.markdown_files.clear();
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles"]);
    assert_eq!(v[0].reason, Reason::Required);
    assert!(
        v[0].message.contains("at least one markdown file"),
        "{}",
        v[0]
    );
}

#[test]
fn more_than_64_files_are_refused() {
    let mut s = valid();
    s.markdown_files = (0..65).map(|i| file(&format!("f{i}.md"), "x")).collect();
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles"]);
    assert_eq!(v[0].reason, Reason::TooMany);
    assert!(
        v[0].message
            .ends_with("at most 64 are allowed; merge some of them"),
        "{}",
        v[0]
    );
    s.markdown_files.pop();
    assert_eq!(validate_create(&s), vec![]);
}

#[test]
fn files_past_the_limit_add_no_violations_of_their_own() {
    let mut s = valid();
    // 8 MiB of `{"filename":"","content":""}` entries: each would break two rules.
    s.markdown_files = vec![file("", ""); 290_000];
    let v = validate_create(&s);
    assert_eq!(v[0].field, "spec.markdownFiles");
    assert_eq!(v[0].reason, Reason::TooMany);
    assert!(
        v[0].message.contains("more than 64 files"),
        "{}",
        v[0].message
    );
    // The first 64 files are still named, each once per broken rule, and nothing after them.
    assert_eq!(v.len(), 1 + 2 * MAX_FILES, "{:?}", &v[..3]);
    assert_eq!(
        v.last().map(|l| l.field.as_str()),
        Some("spec.markdownFiles[63].content")
    );
}

#[test]
fn a_whitespace_only_file_is_named_in_the_message() {
    let mut s = valid();
    s.markdown_files.push(file("notes.md", " \n\t\u{00a0} "));
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles[2].content"]);
    assert!(v[0].message.contains("\"notes.md\""), "{}", v[0]);
}

#[test]
fn bad_filenames_are_refused() {
    for bad in [
        "task.txt",
        ".hidden.md",
        "../etc.md",
        "a/b.md",
        "sp ace.md",
        ".md",
        "md",
        "ü.md",
    ] {
        let mut s = valid();
        s.markdown_files[0].filename = bad.into();
        assert_eq!(
            fields(&validate_create(&s)),
            ["spec.markdownFiles[0].filename"],
            "{bad:?}"
        );
    }
    let mut s = valid();
    s.markdown_files[0].filename = format!("{}.md", "a".repeat(126));
    assert_eq!(
        fields(&validate_create(&s)),
        ["spec.markdownFiles[0].filename"]
    );
    s.markdown_files[0].filename = format!("{}.md", "a".repeat(125));
    assert_eq!(validate_create(&s), vec![]);
}

#[test]
fn filenames_must_be_unique() {
    let mut s = valid();
    s.markdown_files.push(file("task.md", "again"));
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles[2].filename"]);
    assert_eq!(v[0].reason, Reason::Duplicate);
    assert_eq!(
        v[0].message,
        "filename \"task.md\" appears more than once; each file needs its own name"
    );
}

#[test]
fn a_single_file_has_a_character_bound() {
    let mut s = valid();
    s.markdown_files = vec![file("a.md", &"é".repeat(MAX_CONTENT_LEN))];
    assert_eq!(validate_create(&s), vec![]);
    s.markdown_files = vec![file("a.md", &"é".repeat(MAX_CONTENT_LEN + 1))];
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles[0].content"]);
    assert_eq!(v[0].reason, Reason::TooLong);
    assert!(v[0].message.contains("\"a.md\""), "{}", v[0]);
}

#[test]
fn the_total_size_must_fit_a_config_map() {
    let big = |name: &str| file(name, &"x".repeat(MAX_CONTENT_LEN));
    let mut s = valid();
    s.markdown_files = vec![big("a.md"), big("b.md"), big("c.md"), big("d.md")];
    let v = validate_create(&s);
    assert_eq!(fields(&v), ["spec.markdownFiles"]);
    assert_eq!(v[0].reason, Reason::TooLong);
    assert!(
        v[0].message
            .contains("fit in one ConfigMap; move large material elsewhere"),
        "{}",
        v[0]
    );
    s.markdown_files.pop();
    assert_eq!(validate_create(&s), vec![]);
    // Bytes, not characters: 'é' takes two bytes in a ConfigMap.
    let wide = |name: &str| file(name, &"é".repeat(MAX_CONTENT_LEN));
    s.markdown_files = vec![wide("a.md"), wide("b.md")];
    assert_eq!(fields(&validate_create(&s)), ["spec.markdownFiles"]);
}

#[test]
fn every_violation_is_reported_at_once() {
    let s = TaskRunSpec {
        task_id: 0,
        service_name: "Bad".into(),
        agent_name: None,
        context_version: 0,
        markdown_files: vec![file("x.txt", "")],
    };
    assert_eq!(
        fields(&validate_create(&s)),
        [
            "spec.taskId",
            "spec.serviceName",
            "spec.contextVersion",
            "spec.markdownFiles[0].filename",
            "spec.markdownFiles[0].content"
        ]
    );
}

#[test]
fn an_unchanged_update_is_valid() {
    assert_eq!(validate_update(&valid(), &valid()), vec![]);
}

/// As the API server's schema ratcheting does: what an update leaves as it was is not judged
/// again (a rule tightened since it was stored), what it changes or adds is.
#[test]
fn an_update_judges_only_what_it_changes() {
    let mut old = valid();
    old.agent_name = Some("Claude".into());
    old.markdown_files
        .push(file("Notes.txt", "stored under older rules"));
    old.markdown_files.push(file("blank.md", " "));
    let mut new = old.clone();
    new.context_version = 2;
    new.markdown_files.push(file("context-2.md", "added"));
    assert_eq!(validate_update(&old, &new), vec![]);
    // Judged: a changed agentName, a renamed file (its new name and its content), a new bad
    // file. A changed content under a kept name is judged on the content only.
    let mut changed = new.clone();
    changed.agent_name = Some("Other".into());
    changed.markdown_files[2].content = "changed".into();
    changed.markdown_files[3].filename = "Blank.md".into();
    changed.markdown_files.push(file("empty.md", ""));
    changed.markdown_files.push(file("Bad name.md", "x"));
    assert_eq!(
        fields(&validate_update(&old, &changed)),
        [
            "spec.agentName",
            "spec.markdownFiles[3].content",
            "spec.markdownFiles[5].content",
            "spec.markdownFiles[6].filename",
        ]
    );
    // The whole-file rule holds when anything of the file changes (its fileType, here).
    let mut retyped = new.clone();
    retyped.markdown_files[3].file_type = Some(FileType::Context);
    assert_eq!(
        fields(&validate_update(&old, &retyped)),
        ["spec.markdownFiles[3].content"]
    );
    // A content over the length bound, kept, is not judged again; changed, it is.
    let long = "x".repeat(crate::limits::MAX_CONTENT_LEN + 1);
    let mut stored = valid();
    stored.markdown_files.push(file("long.md", &long));
    let mut retyped = stored.clone();
    retyped.markdown_files[2].file_type = Some(FileType::Context);
    assert_eq!(validate_update(&stored, &retyped), vec![]);
    let mut longer = stored.clone();
    longer.markdown_files[2].content.push('y');
    assert_eq!(
        fields(&validate_update(&stored, &longer)),
        ["spec.markdownFiles[2].content"]
    );
    // A kept name still counts for uniqueness.
    let mut twice = new.clone();
    twice.markdown_files.push(file("Notes.txt", "again"));
    assert_eq!(
        fields(&validate_update(&old, &twice)),
        ["spec.markdownFiles[5].filename"]
    );
}

#[test]
fn task_id_is_immutable() {
    let mut new = valid();
    new.task_id = 2;
    let v = validate_update(&valid(), &new);
    assert_eq!(fields(&v), ["spec.taskId"]);
    assert_eq!(v[0].reason, Reason::Forbidden);
    assert!(v[0].message.contains("was 1, now 2"), "{}", v[0]);
    assert!(v[0].message.contains("create a new TaskRun"), "{}", v[0]);
}

#[test]
fn service_name_is_immutable() {
    let mut new = valid();
    new.service_name = "payments".into();
    let v = validate_update(&valid(), &new);
    assert_eq!(fields(&v), ["spec.serviceName"]);
    assert!(
        v[0].message.contains(r#"was "billing", now "payments""#),
        "{}",
        v[0]
    );
    assert!(v[0].message.contains("create a new TaskRun"), "{}", v[0]);
}

#[test]
fn context_version_may_grow_but_never_shrink() {
    let mut old = valid();
    old.context_version = 3;
    let mut new = old.clone();
    new.context_version = 4;
    assert_eq!(validate_update(&old, &new), vec![]);
    new.context_version = 2;
    let v = validate_update(&old, &new);
    assert_eq!(fields(&v), ["spec.contextVersion"]);
    assert!(
        v[0].message
            .contains("contextVersion may not decrease (was 3, now 2): set it to 3 or more"),
        "{}",
        v[0]
    );
}

#[test]
fn an_update_may_not_empty_the_file_list() {
    let mut new = valid();
    new.markdown_files.clear();
    assert_eq!(
        fields(&validate_update(&valid(), &new)),
        ["spec.markdownFiles"]
    );
}

#[test]
fn a_changed_immutable_field_is_reported_once() {
    let mut new = valid();
    new.service_name = "Not-A-Label".into();
    assert_eq!(
        fields(&validate_update(&valid(), &new)),
        ["spec.serviceName"]
    );
}

#[test]
fn hostile_values_are_cut_short_in_messages() {
    let mut s = valid();
    s.service_name = "X".repeat(10_000);
    let v = validate_create(&s);
    assert!(v[0].message.len() < 200, "{}", v[0].message.len());
    s.service_name = "Ü".repeat(30);
    let v = validate_create(&s);
    assert!(v[0].message.len() < 300, "{}", v[0].message);
}

proptest! {
    #[test]
    fn filenames_matching_the_pattern_are_valid(stem in "[A-Za-z0-9][A-Za-z0-9._-]{0,124}") {
        let name = format!("{stem}.md");
        prop_assert!(is_valid_filename(&name));
    }

    #[test]
    fn valid_filenames_stay_inside_the_mount(
        name in "[A-Za-z0-9./_-]{0,12}(\\.md)?|[A-Za-z0-9._-]{120,130}\\.md|\\PC{0,140}"
    ) {
        // Short names from the filename alphabet (slashes and dots included: about a third
        // are valid, so the property is checked on them), names about the length limit, and
        // anything printable.
        if is_valid_filename(&name) {
            prop_assert!(!name.contains('/') && !name.starts_with('.') && name.len() <= MAX_FILENAME_LEN);
            prop_assert!(name.ends_with(".md"));
        }
    }

    #[test]
    fn content_with_a_visible_character_is_kept(pre in "\\s{0,8}", mid in "[!-~]", post in "\\s{0,8}") {
        let content = format!("{pre}{mid}{post}");
        prop_assert!(has_content(&content));
    }

    #[test]
    fn whitespace_only_content_is_refused(ws in "[ \t\n\r\u{000b}\u{000c}\u{0085}\u{00a0}\u{2000}-\u{200a}\u{2028}\u{3000}]{0,32}") {
        prop_assert!(!has_content(&ws));
    }

    #[test]
    fn validation_never_panics(
        task_id in any::<i64>(), version in any::<i64>(), service in "\\PC{0,50}",
        files in proptest::collection::vec(("\\PC{0,20}", "\\PC{0,20}"), 0..5),
    ) {
        let spec = TaskRunSpec {
            task_id, service_name: service, agent_name: None, context_version: version,
            markdown_files: files.into_iter().map(|(n, c)| file(&n, &c)).collect(),
        };
        let _ = validate_create(&spec);
        let _ = validate_update(&valid(), &spec);
    }
}

#[test]
fn markdown_is_bounded_as_the_api_server_stores_it() {
    assert_eq!(
        stored_len("a<b>&\"\\\n\t\u{1}é\u{2028}"),
        1 + 6 + 1 + 6 + 6 + 2 + 2 + 2 + 2 + 6 + 2 + 6
    );
    let spec = |content: &str| TaskRunSpec {
        markdown_files: (0..4).map(|i| file(&format!("f{i}.md"), content)).collect(),
        ..valid()
    };
    // The largest plain markdown still fits; the same size of '<' (six bytes each as stored)
    // does not, and is told why.
    let line = "A line of markdown, with \"quotes\" & more.\n";
    let plain = line.repeat(240_000 / line.len());
    assert!(validate_create(&spec(&plain)).is_empty());
    let violations = validate_create(&spec(&"<".repeat(240_000)));
    assert_eq!(fields(&violations), ["spec.markdownFiles"]);
    assert_eq!(violations[0].reason, Reason::TooLong);
    assert!(
        violations[0]
            .message
            .contains("take 5760020 bytes as the API server stores them"),
        "{}",
        violations[0]
    );
    // An update of one stored before the bound existed that does not grow it gets through;
    // one that grows it does not.
    let before = spec(&"<".repeat(240_000));
    let mut smaller = before.clone();
    smaller.markdown_files.pop();
    smaller.context_version = 2;
    assert!(validate_update(&before, &smaller).is_empty());
    let mut larger = before.clone();
    larger.markdown_files[0].content.push('<');
    assert_eq!(
        fields(&validate_update(&before, &larger)),
        ["spec.markdownFiles"]
    );
    // Beyond the raw bound, that is what is said, once.
    let violations = validate_create(&spec(&"<".repeat(251_000)));
    assert_eq!(violations.len(), 1);
    assert!(
        violations[0].message.contains("bytes in total"),
        "{}",
        violations[0]
    );
}
