//! Names of a TaskRun's children. They are a function of the task's identity and context
//! version only, so a stale cache or a second TaskRun with the same identity can never make
//! a second Job of the same version: the API server refuses the name that is already taken.
//! (At another version the name differs; the controller's duplicate rule covers that.)

/// The longest name a child may have (a DNS-1123 label, and the Job name must fit in the
/// `batch.kubernetes.io/job-name` label of its pods).
pub const MAX_NAME_LEN: usize = 63;
const CONFIG_MAP_SUFFIX: &str = "-files";

/// The Job that runs version `context_version` of the task: `{service}-{taskId}-v{version}`
/// when that fits, otherwise a shortened, hashed form.
pub fn job_name(service_name: &str, task_id: i64, context_version: i64) -> String {
    base_name(service_name, task_id, context_version)
}

/// The ConfigMap that holds the markdown files of that version: the Job's name plus `-files`.
pub fn config_map_name(service_name: &str, task_id: i64, context_version: i64) -> String {
    let mut name = base_name(service_name, task_id, context_version);
    name.push_str(CONFIG_MAP_SUFFIX);
    name
}

/// `{service}-{taskId}-v{version}` when it leaves room for the ConfigMap suffix. The plain
/// form is injective: taskId and version are digits, so the string parses back from the
/// right. Longer inputs get `{service prefix}-h{16 hex digits of a 64-bit hash}`; the `h`
/// keeps that form apart from every plain name (which ends in `-v` and digits).
fn base_name(service_name: &str, task_id: i64, context_version: i64) -> String {
    let budget = MAX_NAME_LEN - CONFIG_MAP_SUFFIX.len();
    let plain = format!("{service_name}-{task_id}-v{context_version}");
    if plain.len() <= budget && is_dns1123_label(&plain) {
        return plain;
    }
    let hash = fnv1a64(plain.as_bytes());
    let suffix = format!("-h{hash:016x}");
    let keep = budget - suffix.len();
    let prefix: String = service_name
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(keep)
        .collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        format!("task{suffix}")
    } else {
        format!("{prefix}{suffix}")
    }
}

/// FNV-1a, 64 bits: stable across releases and platforms (names must never change).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A DNS-1123 label: 1..=63 lowercase letters, digits and '-', starting and ending with a
/// letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_identities_get_readable_names() {
        assert_eq!(job_name("billing", 42, 1), "billing-42-v1");
        assert_eq!(config_map_name("billing", 42, 3), "billing-42-v3-files");
    }

    #[test]
    fn long_identities_are_shortened_with_a_hash() {
        let service = "a".repeat(40);
        let job = job_name(&service, i64::MAX, i64::MAX);
        assert!(job.len() <= MAX_NAME_LEN - CONFIG_MAP_SUFFIX.len(), "{job}");
        assert!(job.starts_with("aaaa") && job.contains("-h"), "{job}");
        assert_ne!(job, job_name(&service, i64::MAX, i64::MAX - 1));
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // Changing the naming scheme would orphan every running Job: pin it.
        let name = job_name(&"x".repeat(40), 123_456_789, 987_654_321);
        assert_eq!(name, format!("{}-h4ec2bcf4fe6adbd7", "x".repeat(39)));
    }

    #[test]
    fn dns1123_label_rules() {
        assert!(is_dns1123_label("a"));
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a-"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label("a_b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }

    fn service() -> impl Strategy<Value = String> {
        "[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn names_are_always_valid_labels(s in service(), t in 1..=i64::MAX, v in 1..=i64::MAX) {
            let job = job_name(&s, t, v);
            let cm = config_map_name(&s, t, v);
            prop_assert!(is_dns1123_label(&job), "{}", job);
            prop_assert!(is_dns1123_label(&cm), "{}", cm);
        }

        #[test]
        fn distinct_inputs_get_distinct_names(
            a in (service(), 1..=i64::MAX, 1..=i64::MAX),
            b in (service(), 1..=i64::MAX, 1..=i64::MAX),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(job_name(&a.0, a.1, a.2), job_name(&b.0, b.1, b.2));
            prop_assert_ne!(config_map_name(&a.0, a.1, a.2), config_map_name(&b.0, b.1, b.2));
        }

        #[test]
        fn neighbouring_versions_and_tasks_never_collide(s in service(), t in 1..1_000_000i64, v in 1..1_000i64) {
            prop_assert_ne!(job_name(&s, t, v), job_name(&s, t, v + 1));
            prop_assert_ne!(job_name(&s, t, v), job_name(&s, t + 1, v));
        }
    }
}
