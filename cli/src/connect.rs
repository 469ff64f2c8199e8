//! A client from the kubectl-style connection flags.

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

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
