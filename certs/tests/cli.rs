//! The `taskrun-certs` command: a renewal keeps the CA and the hosts, and a CA half written
//! says what to do.

use std::path::Path;
use std::process::{Command, Output};

const HOST: &str = "taskrun-webhook.taskrun-system.svc";

fn run(out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskrun-certs"))
        .arg(format!("--out={}", out.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("taskrun-certs: {e}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_renewal_keeps_the_ca_and_the_hosts_and_a_half_written_ca_is_refused_with_what_to_do() {
    let dir = std::env::temp_dir().join(format!("taskrun-certs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let host = format!("--host={HOST}");
    assert!(run(&dir, &[&host]).status.success(), "first run");
    let (ca, serving) = (read(&dir.join("ca.crt")), read(&dir.join("tls.crt")));

    // Renewed the same way, then with the hosts left out.
    assert!(run(&dir, &[&host]).status.success(), "renewal");
    assert!(run(&dir, &[]).status.success(), "renewal without --host");
    assert_eq!(read(&dir.join("ca.crt")), ca, "the CA was replaced");
    let renewed = read(&dir.join("tls.crt"));
    assert_ne!(renewed, serving, "no new serving certificate");
    assert_eq!(
        taskrun_certs::hosts_of(&renewed),
        Some(vec![HOST.to_owned()])
    );

    // A tls.crt whose hosts cannot be read is not renewed for the defaults.
    std::fs::write(dir.join("tls.crt"), "garbage").expect("write tls.crt");
    let unknown = run(&dir, &[]);
    let stderr = String::from_utf8_lossy(&unknown.stderr).into_owned();
    assert!(
        !unknown.status.success(),
        "renewed for hosts it could not read"
    );
    assert!(stderr.contains("--host"), "{stderr}");

    std::fs::remove_file(dir.join("ca.key")).expect("rm ca.key");
    let refused = run(&dir, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(!refused.status.success(), "a CA without its key was used");
    assert!(stderr.contains("without the other"), "{stderr}");
}
