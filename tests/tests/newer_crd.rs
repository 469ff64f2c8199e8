//! The controller and kubectl-taskrun on a cluster whose TaskRun CRD is newer than they are
//! (a rollback of the operator leaves the newer CRD's values in stored TaskRuns): a fileType
//! or a phase they do not know must not make any TaskRun unreadable. One such TaskRun on a
//! list page would fail the whole list and stop the controller for every TaskRun.
//! A binary of its own: its control plane's CRD allows more than this build knows.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use taskrun::TaskRun;
use taskrun_tests::controller::Controller;
use taskrun_tests::{ControlPlane, wait_for, work_dir, workspace_bin};

const CRD: &str = "taskruns.orchestrator.io";
const WAIT: Duration = Duration::from_secs(60);

/// Written and read as plain JSON: this build's own types must not decide what the test sees.
fn taskrun(name: &str, task_id: i64, file_type: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {"taskId": task_id, "serviceName": "newer", "contextVersion": 1,
                 "markdownFiles": [{"filename": "task.md", "content": "# Do it",
                                    "fileType": file_type}]},
    }))
    .expect("a TaskRun")
}

/// Adds `value` to the enum at `path` in the CRD's schema.
async fn allow(crds: &Api<CustomResourceDefinition>, path: &str, value: &str) {
    let crd = crds.get(CRD).await.expect("the CRD");
    let mut crd = serde_json::to_value(crd).expect("json");
    let path = format!("/spec/versions/0/schema/openAPIV3Schema/properties/{path}/enum");
    crd.pointer_mut(&path)
        .and_then(|e| e.as_array_mut())
        .unwrap_or_else(|| panic!("no enum at {path}"))
        .push(json!(value));
    let crd = serde_json::from_value(crd).expect("a CRD");
    crds.replace(CRD, &PostParams::default(), &crd)
        .await
        .unwrap_or_else(|e| panic!("allow {value:?} at {path}: {e}"));
}

#[tokio::test]
async fn values_of_a_newer_crd_stop_neither_the_controller_nor_the_plugin() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    allow(
        &crds,
        "spec/properties/markdownFiles/items/properties/fileType",
        "rubric",
    )
    .await;
    allow(&crds, "status/properties/phase", "Cancelled").await;
    let ns = cp.namespace("newer-crd").await;
    let resource = ApiResource::erase::<TaskRun>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);

    // The API server takes the new schema a moment after the patch.
    let rubric = taskrun("rubric", 1, "rubric");
    wait_for("the newer schema to be served", WAIT, || async {
        api.create(&PostParams::default(), &rubric).await.ok()
    })
    .await;
    api.create(&PostParams::default(), &taskrun("cancelled", 2, "task"))
        .await
        .expect("create");
    let status = json!({"status": {"phase": "Cancelled"}});
    wait_for("a phase of the newer schema", WAIT, || async {
        let patch = Patch::Merge(&status);
        let patched = api
            .patch_status("cancelled", &PatchParams::default(), &patch)
            .await;
        patched.ok()
    })
    .await;
    api.create(&PostParams::default(), &taskrun("plain", 3, "task"))
        .await
        .expect("create");

    // The controller lists them all and runs each.
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for (name, job) in [
        ("rubric", "newer-1-v1"),
        ("cancelled", "newer-2-v1"),
        ("plain", "newer-3-v1"),
    ] {
        wait_for(
            &format!("{name}'s status to name its Job"),
            WAIT,
            || async {
                let tr = api.get(name).await.ok()?;
                (tr.data["status"]["jobName"] == job).then_some(())
            },
        )
        .await;
        jobs.get(job)
            .await
            .unwrap_or_else(|e| panic!("{name}'s Job {job}: {e}"));
    }
    let tr = api.get("cancelled").await.expect("get");
    assert_eq!(
        tr.data["status"]["phase"], "Pending",
        "written again from its Job"
    );

    // The plugin adds context to it, and the file type stays.
    let file = work_dir().join("newer.md");
    std::fs::write(&file, "# more\n").expect("write a context file");
    let out = Command::new(workspace_bin("kubectl-taskrun"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["-n", &ns, "context", "add", "rubric", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl-taskrun runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "context add: {err}");
    let tr = api.get("rubric").await.expect("get");
    let spec = &tr.data["spec"];
    assert_eq!(spec["contextVersion"], 2);
    let types: Vec<(&Value, &Value)> = spec["markdownFiles"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| (&f["filename"], &f["fileType"]))
        .collect();
    assert_eq!(
        types,
        [
            (&json!("task.md"), &json!("rubric")),
            (&json!("newer.md"), &json!("context")),
        ]
    );
}
