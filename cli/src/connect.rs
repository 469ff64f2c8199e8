//! A client from the kubectl-style connection flags, and whether its cluster serves TaskRuns.

use kube::Resource;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use taskrun::TaskRun;

use crate::args::Connection;
use crate::error::Error;

/// The client and the namespace to work in (the flag, else the context's, else `default`).
pub async fn connect(conn: &Connection) -> Result<(kube::Client, String), Error> {
    let options = KubeConfigOptions {
        context: conn.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&conn.kubeconfig, &conn.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        // A named context only exists in a kubeconfig: no in-cluster fallback.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    let namespace = conn
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok((client, namespace))
}

/// Asks the cluster's discovery whether it serves TaskRuns, before any command touches one.
/// Without the CRD every TaskRun call answers a bare "404 page not found": `context add` ended
/// with that, and `migrate-helm` failed each release with it.
pub async fn check_taskruns_served(client: &kube::Client) -> Result<(), Error> {
    let api_version = TaskRun::api_version(&());
    let plural = TaskRun::plural(&());
    let served = match client.list_api_group_resources(&api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(e) => {
            return Err(Error::api(
                format!("asking the cluster for {api_version}"),
                e,
            ));
        }
    };
    if served {
        Ok(())
    } else {
        Err(Error::NotServed {
            resource: format!("{plural}.{api_version}"),
        })
    }
}
