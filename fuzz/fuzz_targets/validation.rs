//! The shared validation rules on any JSON that deserializes into a TaskRun spec: never a
//! panic, every violation has a `spec.` path and a message, and an unchanged update is judged
//! like a create but for what an update leaves as it was, which is not judged again (each
//! file's and agentName's rules, and a stored size over the bound that it does not grow:
//! `shared/src/validation.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskrun::{TaskRunSpec, validate_create, validate_update};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<TaskRunSpec>(data) else {
        return;
    };
    let created = validate_create(&spec);
    let updated = validate_update(&spec, &spec);
    // Compared apart from the rules an update does not judge again (a kept name still counts
    // for uniqueness, so per-file results may differ in which duplicate is named).
    let judged_again = |all: &[taskrun::Violation]| -> Vec<taskrun::Violation> {
        all.iter()
            .filter(|v| {
                !v.field.starts_with("spec.markdownFiles[")
                    && v.field != "spec.agentName"
                    && !v.message.contains("as the API server stores them")
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        judged_again(&created),
        judged_again(&updated),
        "an unchanged update judged unlike a create"
    );
    assert!(
        updated.iter().all(|v| v.field != "spec.agentName"),
        "an unchanged agentName judged again: {updated:?}"
    );
    for v in &created {
        assert!(v.field.starts_with("spec."), "{v}");
        assert!(!v.message.is_empty());
    }
});
