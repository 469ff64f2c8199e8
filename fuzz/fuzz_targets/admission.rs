//! The webhook's admission handling from raw request bytes to the response, for both hooks:
//! never a panic; a body that is an AdmissionReview gets an AdmissionReview back with the
//! same uid; anything else gets a 400 with a message.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskrun::Identity;
use taskrun_webhook::admission::{Hook, admit};
use taskrun_webhook::index::{Entry, Index};

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let index = Index::default();
    index.init();
    index.init_apply(Entry {
        identity: Identity::new("default", "billing", 1),
        name: "existing".into(),
        terminating: false,
        has_run: true,
        created: Some(1_764_000_000),
        uid: "0b6c9f8e-1f2a-4c3d-8e5f-6a7b8c9d0e1f".into(),
    });
    index.init_done();
    index
});

fuzz_target!(|data: &[u8]| {
    for hook in [Hook::Validate, Hook::Mutate] {
        let answer = admit(hook, data, &*INDEX);
        match answer.http_status {
            200 => {
                let review: serde_json::Value =
                    serde_json::from_slice(&answer.body).expect("a 200 answer is JSON");
                assert_eq!(review["kind"], "AdmissionReview");
                // The answer carries the whole uid; `answer.uid`, for the logs, its first 64
                // characters.
                let uid = review["response"]["uid"].as_str().expect("a uid");
                assert_eq!(uid.chars().take(64).collect::<String>(), answer.uid);
            }
            400 => assert!(!answer.message.is_empty(), "a 400 says why"),
            other => panic!("unexpected status {other}"),
        }
    }
});
