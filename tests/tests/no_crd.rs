//! kubectl-taskrun on a cluster that does not serve TaskRuns: both commands say the CRD is
//! missing and change nothing, instead of "TaskRun not found" or one 404 per Helm release.
//! A binary of its own: its control plane has the CRD deleted.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::DeleteParams;
use taskrun_tests::{ControlPlane, wait_for, wait_gone, work_dir, workspace_bin};

const CRD: &str = "taskruns.orchestrator.io";

fn plugin(cp: &ControlPlane, args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_bin("kubectl-taskrun"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl-taskrun runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn both_commands_say_the_crd_is_missing() {
    let cp = ControlPlane::shared();
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await);
    crds.delete(CRD, &DeleteParams::default())
        .await
        .expect("delete the CRD");
    wait_gone("the CRD", Duration::from_secs(60), &crds, CRD).await;
    // Discovery follows the deletion a moment later.
    let client = cp.client().await;
    wait_for(
        "discovery without TaskRuns",
        Duration::from_secs(30),
        || async {
            let listed = client.list_api_group_resources("orchestrator.io/v1").await;
            matches!(listed, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
        },
    )
    .await;

    let file = work_dir().join("ctx.md");
    std::fs::write(&file, "# more context\n").expect("write a context file");
    let file = file.to_str().expect("a UTF-8 path");
    let missing =
        "this cluster does not serve taskruns.orchestrator.io/v1: install the TaskRun CRD";
    for args in [
        &["context", "add", "some-task", "-f", file][..],
        &["migrate-helm", "--dry-run"][..],
    ] {
        let (code, err) = plugin(cp, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(missing), "{args:?}: {err}");
        assert!(!err.contains("not found"), "{args:?}: {err}");
    }
}
