//! The pinned Go tools the tests drive (helm, cert-manager, kstatus, fluxapply), each built
//! once per machine by its `tests/<tool>/build.sh` and cached under `~/.cache/taskrun/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::repo_root;

/// Runs `tests/<tool>/build.sh` (at once when cached) and returns what it prints: the path of
/// the built tool or its cache directory.
pub fn build(tool: &str) -> PathBuf {
    let script = repo_root().join("tests").join(tool).join("build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (its output is above)",
        script.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
