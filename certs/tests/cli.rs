//! The `taskrun-certs` command: a renewal keeps the CA, and a CA half written says what to do.

use std::path::Path;
use std::process::{Command, Output};

fn run(out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskrun-certs"))
        .arg(format!("--out={}", out.display()))
        .args(["--host=taskrun-webhook.taskrun-system.svc"])
        .output()
        .unwrap_or_else(|e| panic!("taskrun-certs: {e}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_renewal_keeps_the_ca_and_a_half_written_one_is_refused_with_what_to_do() {
    let dir = std::env::temp_dir().join(format!("taskrun-certs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run(&dir).status.success(), "first run");
    let (ca, serving) = (read(&dir.join("ca.crt")), read(&dir.join("tls.crt")));

    assert!(run(&dir).status.success(), "renewal");
    assert_eq!(read(&dir.join("ca.crt")), ca, "the CA was replaced");
    assert_ne!(
        read(&dir.join("tls.crt")),
        serving,
        "no new serving certificate"
    );

    std::fs::remove_file(dir.join("ca.key")).expect("rm ca.key");
    let refused = run(&dir);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(!refused.status.success(), "a CA without its key was used");
    assert!(stderr.contains("without the other"), "{stderr}");
}
