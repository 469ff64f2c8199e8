//! The shared validation rules on any JSON that deserializes into a TaskRun spec: never a
//! panic, and the two entry points agree (an unchanged update reports what create reports),
//! but for the one rule an update may keep breaking: a stored size over the bound, which an
//! update that does not grow it is let through with (`shared/src/validation.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskrun::{TaskRunSpec, validate_create, validate_update};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<TaskRunSpec>(data) else { return };
    let created = validate_create(&spec);
    let updated = validate_update(&spec, &spec);
    let mut kept = created.clone();
    kept.retain(|v| !v.message.contains("as the API server stores them"));
    assert_eq!(kept, updated, "an unchanged update must be judged like a create");
    for v in &created {
        assert!(v.field.starts_with("spec."), "{v}");
        assert!(!v.message.is_empty());
    }
});
