//! The process's last words go through the logger: a panic under JSON logging is one JSON line
//! at ERROR with where it happened, and under a filter that hides errors Rust's own report
//! still reaches stderr. Each case runs in a child process (this same test binary), since the
//! logger and the panic hook are global.

use std::process::Command;

use serde_json::Value;
use taskrun_telemetry::{LogFormat, init};

/// Set in the child: which case to play.
const CASE: &str = "TASKRUN_TELEMETRY_CASE";

/// Runs this test binary again for the test `name`, with `case` set; returns its stderr.
fn child(name: &str, case: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the child runs");
    assert!(!out.status.success(), "the child was meant to panic");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// In the child: installs the logger as `case` says and panics.
fn play(case: &str) {
    let (format, level) = match case {
        "json" => (LogFormat::Json, "info"),
        _ => (LogFormat::Text, "off"),
    };
    init(format, level).expect("the logger");
    panic!("the sky fell");
}

#[test]
fn a_panic_is_a_json_line_at_error() {
    if let Ok(case) = std::env::var(CASE) {
        play(&case);
    }
    let stderr = child("a_panic_is_a_json_line_at_error", "json");
    let line: Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{stderr}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["message"], "panicked", "{line}");
    let panic = line["panic"].as_str().unwrap_or_default();
    assert!(
        panic.contains("the sky fell") && panic.contains("last_words.rs:"),
        "{line}"
    );
    assert!(
        !stderr.contains("thread '"),
        "Rust's own report too:\n{stderr}"
    );
}

#[test]
fn under_a_filter_that_hides_errors_rusts_report_still_shows() {
    if let Ok(case) = std::env::var(CASE) {
        play(&case);
    }
    let stderr = child(
        "under_a_filter_that_hides_errors_rusts_report_still_shows",
        "off",
    );
    assert!(
        stderr.contains("panicked at") && stderr.contains("the sky fell"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"level\""), "{stderr}");
}
