//! Certificates and kubeconfigs of one control plane, all under `<work_dir>/pki`.

use std::path::{Path, PathBuf};

use taskrun_certs::Ca;

use super::StartError;

pub(super) struct Pki {
    ca: Ca,
    dir: PathBuf,
    pub ca_path: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_cert: PathBuf,
    pub service_account_key: PathBuf,
    pub admin_kubeconfig: PathBuf,
}

impl Pki {
    /// A fresh CA, the API server's serving certificate (127.0.0.1, localhost), the
    /// service-account signing key, and the admin kubeconfig at `<work_dir>/kubeconfig`.
    pub fn create(work_dir: &Path, server_url: &str) -> Result<Self, StartError> {
        let dir = work_dir.join("pki");
        let err = |e: &dyn std::fmt::Display| StartError(format!("certificates: {e}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err(&e))?;
        }
        std::fs::create_dir_all(dir.join("users")).map_err(|e| err(&e))?;
        let ca = Ca::new("taskrun-test-ca").map_err(|e| err(&e))?;
        ca.pair().write(&dir, "ca").map_err(|e| err(&e))?;
        ca.serving(&["127.0.0.1", "localhost"])
            .and_then(|pair| pair.write(&dir, "apiserver"))
            .map_err(|e| err(&e))?;
        // The API server reads the verifying key from a certificate as well as from a bare
        // public key, so a self-signed certificate carries it.
        Ca::new("taskrun-service-accounts")
            .and_then(|sa| sa.pair().write(&dir, "service-account"))
            .map_err(|e| err(&e))?;
        let pki = Pki {
            ca_path: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_cert: dir.join("service-account.crt"),
            service_account_key: dir.join("service-account.key"),
            admin_kubeconfig: work_dir.join("kubeconfig"),
            dir,
            ca,
        };
        pki.write_kubeconfig(
            &pki.admin_kubeconfig,
            "admin",
            &["system:masters"],
            "admin",
            server_url,
        )
        .map_err(|e| err(&e))?;
        Ok(pki)
    }

    /// Writes `pki/users/<stem>.kubeconfig` for `user` in `groups`.
    pub fn user_kubeconfig(
        &self,
        stem: &str,
        user: &str,
        groups: &[&str],
        server_url: &str,
    ) -> Result<PathBuf, String> {
        let path = self.dir.join("users").join(format!("{stem}.kubeconfig"));
        self.write_kubeconfig(&path, user, groups, &format!("users/{stem}"), server_url)?;
        Ok(path)
    }

    fn write_kubeconfig(
        &self,
        path: &Path,
        user: &str,
        groups: &[&str],
        stem: &str,
        server_url: &str,
    ) -> Result<(), String> {
        let pair = self.ca.client(user, groups).map_err(|e| e.to_string())?;
        pair.write(&self.dir, stem).map_err(|e| e.to_string())?;
        // JSON is YAML; serde_json quotes every value correctly.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "taskrun", "cluster": {
                "server": server_url,
                "certificate-authority": self.ca_path,
            }}],
            "users": [{"name": user, "user": {
                "client-certificate": self.dir.join(format!("{stem}.crt")),
                "client-key": self.dir.join(format!("{stem}.key")),
            }}],
            "contexts": [{"name": "taskrun", "context": {"cluster": "taskrun", "user": user}}],
            "current-context": "taskrun",
        });
        std::fs::write(path, config.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
