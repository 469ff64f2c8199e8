use taskrun_tests::ControlPlane;

#[tokio::test]
async fn crd_is_established() {
    let cp = ControlPlane::shared();
    let out = cp
        .kubectl()
        .args(["get", "crd", "taskruns.orchestrator.io"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
