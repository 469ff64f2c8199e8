//! The Secret, projected into the webhook's certificate directory as the kubelet does it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::SERVING;
use crate::certificates::secret_files;

/// Keeps a directory in sync with a Secret the way the kubelet maintains a Secret volume:
/// the files live in a timestamped directory, `..data` is a symlink to it, each key is a
/// symlink `key -> ..data/key`, and an update writes a new timestamped directory and swaps
/// `..data` with one rename, so a reader never sees a certificate without its key.
pub(crate) struct Projector {
    task: tokio::task::JoinHandle<()>,
}

impl Projector {
    pub(crate) fn start(
        secrets: Api<Secret>,
        dir: PathBuf,
        initial: BTreeMap<String, Vec<u8>>,
    ) -> Self {
        project(&dir, &initial).unwrap_or_else(|e| panic!("cannot project the Secret: {e}"));
        let task = tokio::spawn(async move {
            let mut current = initial;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(Some(secret)) = secrets.get_opt(SERVING).await else {
                    continue;
                };
                let files = secret_files(&secret);
                if files != current {
                    project(&dir, &files).unwrap_or_else(|e| panic!("cannot project: {e}"));
                    current = files;
                }
            }
        });
        Projector { task }
    }

    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

fn project(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let target = dir.join(&stamp);
    std::fs::create_dir(&target)?;
    for (key, value) in files {
        std::fs::File::create(target.join(key))?.write_all(value)?;
    }
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for key in files.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

#[test]
fn an_update_swaps_data_and_leaves_one_version() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = |cert: &str| BTreeMap::from([("tls.crt".to_owned(), cert.as_bytes().to_vec())]);
    project(dir.path(), &files("first")).unwrap_or_else(|e| panic!("{e}"));
    project(dir.path(), &files("second")).unwrap_or_else(|e| panic!("{e}"));
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
    assert_eq!(read("tls.crt"), "second");
    assert_eq!(
        std::fs::read_link(dir.path().join("tls.crt")).ok(),
        Some(PathBuf::from("..data/tls.crt"))
    );
    let versions: Vec<_> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .collect();
    assert_eq!(versions.len(), 1, "the old version is removed");
}
