//! The serving certificate: loaded from PEM files, swapped atomically when the files change,
//! and handed to rustls per handshake, so new connections get the new certificate while
//! connections already open keep theirs.
//!
//! cert-manager (and any Secret volume) replaces the files by swapping a `..data` symlink in
//! the directory, so the directory is watched, not the files; a periodic comparison catches
//! anything the notifications miss. Notifications that cannot mean a change (opens and reads,
//! the webhook's own among them) are ignored. A pair read across a swap (the old certificate,
//! then the new key) is read once more before it counts as failed. A pair that does not load
//! (half-written, key not matching the certificate, or past its notAfter while the one served
//! is not) is logged and counted, and the previous pair keeps serving. Whether a pair is
//! usable is rustls' call; the X.509 parser only reads the notAfter, for the expiry gauge and
//! that comparison, and a certificate it cannot read is served with the gauge at 0.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use x509_parser::time::ASN1Time;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("cannot use the private key in {path}: {reason}")]
    BadKey { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("the certificate in {path} expired at {not_after}; the one served now is still valid")]
    Expired { path: String, not_after: ASN1Time },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A certificate's notAfter, or why it cannot be read.
pub type NotAfter = Result<ASN1Time, String>;

/// What a reload attempt found.
#[derive(Debug)]
pub enum Reload {
    /// The files are what is already served (or what already failed).
    Unchanged,
    /// A new pair is served; its certificate expires at `not_after`, or, when the certificate
    /// parser (stricter than rustls, which serves it) cannot read its validity, at a time not
    /// known, for the reason given.
    Loaded {
        not_after: NotAfter,
    },
    Failed(TlsError),
}

pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<CertifiedKey>,
    /// The file contents last attempted, so an unchanged (or unchanged bad) pair is not
    /// re-parsed, re-logged and re-counted at every poll.
    last_seen: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertStore {
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Self {
        Self {
            cert_path,
            key_path,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: ArcSwapOption::empty(),
            last_seen: Mutex::new(None),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Re-reads the files and swaps the served pair if they changed and load.
    pub fn reload(&self) -> Reload {
        match self.attempt() {
            // The files may have been read across a rotation (the certificate before the
            // kubelet swapped `..data`, the key after it): look once more before counting it.
            Reload::Failed(first) => match self.attempt() {
                Reload::Unchanged => Reload::Failed(first),
                second => second,
            },
            done => done,
        }
    }

    fn attempt(&self) -> Reload {
        let cert = match read(&self.cert_path) {
            Ok(b) => b,
            Err(e) => return self.failed_once(e),
        };
        let key = match read(&self.key_path) {
            Ok(b) => b,
            Err(e) => return self.failed_once(e),
        };
        let pair = (cert, key);
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() == Some(&pair) {
            return Reload::Unchanged;
        }
        let result = self
            .parse(&pair.0, &pair.1)
            .and_then(|(key, not_after)| self.not_a_step_back(key, not_after));
        *last = Some(pair);
        match result {
            Ok((key, not_after)) => {
                self.current.store(Some(Arc::new(key)));
                Reload::Loaded { not_after }
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// An expired pair does not replace one still valid: a Secret written back from an old
    /// copy would otherwise fail every handshake until someone noticed. (Only notAfter: a
    /// new certificate's notBefore may be a moment ahead of this node's clock.) Served when
    /// nothing known to be valid is (none served, or one whose notAfter cannot be read), as it
    /// fails no more than what it replaces. Valid through its notAfter second, as RFC 5280 has
    /// it.
    fn not_a_step_back(
        &self,
        key: CertifiedKey,
        end: NotAfter,
    ) -> Result<(CertifiedKey, NotAfter), TlsError> {
        let now = ASN1Time::now();
        let expired = end.as_ref().is_ok_and(|end| *end < now);
        let current_valid = self.current.load().as_ref().is_some_and(|current| {
            current
                .cert
                .first()
                .is_some_and(|leaf| not_after(leaf).is_ok_and(|end| end >= now))
        });
        match end {
            Ok(not_after) if expired && current_valid => Err(TlsError::Expired {
                path: self.cert_path.display().to_string(),
                not_after,
            }),
            end => Ok((key, end)),
        }
    }

    /// A missing or unreadable file counts once until the files can be read again.
    fn failed_once(&self, e: TlsError) -> Reload {
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let marker = (Vec::new(), e.to_string().into_bytes());
        if last.as_ref() == Some(&marker) {
            return Reload::Unchanged;
        }
        *last = Some(marker);
        Reload::Failed(e)
    }

    /// The pair and its certificate's notAfter. Whether the pair is usable is rustls' call
    /// alone: a leaf only the expiry's parser refuses is usable, its notAfter unknown.
    fn parse(&self, cert: &[u8], key: &[u8]) -> Result<(CertifiedKey, NotAfter), TlsError> {
        let cert_path = self.cert_path.display().to_string();
        let key_path = self.key_path.display().to_string();
        let bad_certificate = |reason: String| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_certificate(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate { path: cert_path });
        };
        let not_after = not_after(leaf);
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        // A key rustls cannot sign with (P-521, say) is the key's fault, not a mismatch.
        let signing_key = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.clone(),
                reason: format!("{e} (RSA, ECDSA P-256 or P-384 and Ed25519 keys are served)"),
            })?;
        let served = CertifiedKey::new(chain, signing_key);
        match served.keys_match() {
            // As rustls' own CertifiedKey::from_der: a key that cannot tell is not refused.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(TlsError::Mismatch {
                    cert: cert_path,
                    key: key_path,
                    reason: e.to_string(),
                });
            }
        }
        Ok((served, not_after))
    }

    /// Reloads, logging and counting the outcome.
    pub fn reload_logged(&self, metrics: &Metrics) {
        match self.reload() {
            Reload::Unchanged => {}
            Reload::Loaded { not_after } => {
                metrics.cert_reloads.inc();
                metrics.cert_expiry.set(expiry_gauge(&not_after));
                match not_after {
                    Ok(not_after) => {
                        tracing::info!(cert = %self.cert_path.display(), %not_after, "serving certificate loaded");
                    }
                    Err(reason) => {
                        tracing::warn!(
                            cert = %self.cert_path.display(), %reason,
                            "serving certificate loaded, but its notAfter unknown: it cannot be parsed as X.509 (the TLS library accepts it); the expiry gauge reads 0 until a certificate whose expiry can be read is loaded"
                        );
                    }
                }
            }
            Reload::Failed(e) => {
                metrics.cert_reload_failures.inc();
                if self.is_loaded() {
                    tracing::error!(error = %e, "new certificate not loaded; the previous one keeps serving");
                } else {
                    tracing::error!(error = %e, "no serving certificate yet; not ready");
                }
            }
        }
    }

    /// The directories holding the files: where a symlink swap shows up.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert_path, &self.key_path]
            .into_iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        dirs
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None aborts the handshake: nothing to serve yet.
        self.current.load_full()
    }
}

/// TLS 1.2 and 1.3, HTTP/1.1, the certificate from `store`. The API server calls an admission
/// webhook over HTTP/1.1 only, by Service or by URL (`k8s.io/apiserver`,
/// `pkg/util/webhook/client.go`; HTTP/2 only to a URL at localhost, where HTTP/1.1 serves as
/// well), so HTTP/2 is not offered: a client that asks for nothing else is refused at the
/// handshake (`no_application_protocol`).
pub fn server_config(store: Arc<CertStore>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(store.provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the pair now, then again whenever the directory changes or `poll` passes. Runs
/// until the process ends.
pub async fn watch(store: Arc<CertStore>, poll: Duration, metrics: Arc<Metrics>) {
    reload_off_thread(&store, &metrics).await;
    let (tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if may_change(&event) {
            // A full channel already means "look again".
            let _ = tx.try_send(());
        }
    });
    // Kept alive for the life of the loop; the poll covers whatever it cannot watch.
    let _watcher = match watcher {
        Ok(mut w) => {
            for dir in store.dirs() {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the certificate directory; polling only");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file notifications; polling the certificate only");
            None
        }
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                // A rotation writes several entries; let it finish before reading.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changed.try_recv().is_ok() {}
            }
            _ = ticker.tick() => {}
        }
        reload_off_thread(&store, &metrics).await;
    }
}

/// Whether a notification can mean the files changed. Opening and reading them cannot, and
/// with plain files (not the Secret volume's symlinks into a subdirectory) each reload's own
/// reads would otherwise queue the next one. Closing a file written to can (the end of a
/// write); an error might (look again).
fn may_change(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(access) => access == AccessKind::Close(AccessMode::Write),
            _ => true,
        },
        Err(_) => true,
    }
}

/// Reloads on the blocking pool: the main runtime's one thread serves admission connections
/// too, and a read that stalls (a hung mount, a FIFO in place of a file) must not stall every
/// request with it. Until such a
/// read returns, no other reload starts; the loaded pair keeps serving.
async fn reload_off_thread(store: &Arc<CertStore>, metrics: &Arc<Metrics>) {
    let (store, metrics) = (store.clone(), metrics.clone());
    if let Err(e) = tokio::task::spawn_blocking(move || store.reload_logged(&metrics)).await {
        tracing::error!(error = %e, "the certificate reload failed; trying again on the next change");
    }
}

/// The leaf's notAfter, or why it cannot be read.
fn not_after(leaf: &[u8]) -> NotAfter {
    x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| cert.validity().not_after)
        .map_err(|e| e.to_string())
}

/// The expiry gauge's value: notAfter as Unix seconds, 0 when it is not known.
fn expiry_gauge(not_after: &NotAfter) -> i64 {
    not_after.as_ref().map_or(0, ASN1Time::timestamp)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrun_certs::Ca;

    /// A throwaway ECDSA P-521 key (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-521`), which rustls' ring provider cannot sign with.
    const P521_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIA7yXG1+y7CTbFHC2M\n\
RwYqBsurxfbBStFHhepDCi4yZ4iDysgpjHnA5U6OHCK0N1joAD0WoJ0FiWibjog6\n\
x+CgnoOhgYkDgYYABAAs7ubXei7yaGLN4L+4Hwl5UC2FR0CaGDxjc9105S0xCoph\n\
kW6lz5auyp7GmFfbQkJCVKGOUFeHDO80NIPZAlo1UgCH5zrgl4xsSQpiB8Rd1pXP\n\
chSpFYznAh7f/PdO4nYcxG1H7ageF4JkNDSg9XaDLmUy/HNq9eYGpLSP/Q9nxOuW\n\
sA==\n\
-----END PRIVATE KEY-----\n\
";

    fn served(store: &CertStore) -> Vec<u8> {
        store
            .current
            .load_full()
            .map(|k| k.cert[0].to_vec())
            .unwrap_or_default()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn a_pair_is_loaded_once_and_replaced_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        let first = ca.serving(&["127.0.0.1"]).expect("cert");
        first.write(dir.path(), "tls").expect("write");
        let store = CertStore::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
        assert!(!store.is_loaded());
        assert!(matches!(store.reload(), Reload::Loaded { .. }));
        assert!(matches!(store.reload(), Reload::Unchanged));
        assert_eq!(served(&store), der(&first.cert_pem));

        let second = ca.serving(&["127.0.0.1"]).expect("cert");
        second.write(dir.path(), "tls").expect("write");
        assert!(matches!(store.reload(), Reload::Loaded { .. }));
        assert_eq!(served(&store), der(&second.cert_pem));
    }

    #[test]
    fn a_bad_pair_keeps_the_old_one_serving_and_fails_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        let good = ca.serving(&["127.0.0.1"]).expect("cert");
        good.write(dir.path(), "tls").expect("write");
        let store = CertStore::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
        assert!(matches!(store.reload(), Reload::Loaded { .. }));

        // A certificate with somebody else's key.
        let other = ca.serving(&["127.0.0.1"]).expect("cert");
        std::fs::write(dir.path().join("tls.key"), &other.key_pem).expect("write");
        let failed = store.reload();
        assert!(
            matches!(&failed, Reload::Failed(TlsError::Mismatch { .. })),
            "{failed:?}"
        );
        assert!(matches!(store.reload(), Reload::Unchanged), "counted once");
        assert_eq!(served(&store), der(&good.cert_pem));

        std::fs::write(dir.path().join("tls.crt"), "garbage").expect("write");
        assert!(matches!(
            store.reload(),
            Reload::Failed(TlsError::NoCertificate { .. })
        ));
        std::fs::remove_file(dir.path().join("tls.crt")).expect("rm");
        assert!(matches!(
            store.reload(),
            Reload::Failed(TlsError::Read { .. })
        ));
        assert!(matches!(store.reload(), Reload::Unchanged));
        assert_eq!(served(&store), der(&good.cert_pem));

        // A key of a type that cannot be served is called that, not a mismatch.
        std::fs::write(dir.path().join("tls.crt"), &good.cert_pem).expect("write");
        std::fs::write(dir.path().join("tls.key"), P521_KEY).expect("write");
        let failed = store.reload();
        assert!(
            matches!(&failed, Reload::Failed(TlsError::BadKey { reason, .. }) if reason.contains("P-384")),
            "{failed:?}"
        );

        // Fixed: the matching pair loads again.
        other.write(dir.path(), "tls").expect("write");
        assert!(matches!(store.reload(), Reload::Loaded { .. }));
        assert_eq!(served(&store), der(&other.cert_pem));
    }

    #[tokio::test]
    async fn a_symlink_swap_in_the_directory_is_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        // The Secret-volume layout: tls.crt -> ..data/tls.crt, ..data -> ..v1
        let v1 = dir.path().join("..v1");
        std::fs::create_dir(&v1).expect("mkdir");
        let first = ca.serving(&["127.0.0.1"]).expect("cert");
        first.write(&v1, "tls").expect("write");
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("ln");
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).expect("ln");
        }
        let store = Arc::new(CertStore::new(
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
        ));
        let metrics = Arc::new(Metrics::default());
        // A long poll: only the notification can make this test pass in time.
        let task = tokio::spawn(watch(
            store.clone(),
            Duration::from_secs(3600),
            metrics.clone(),
        ));
        while !store.is_loaded() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v2).expect("mkdir");
        let second = ca.serving(&["127.0.0.1"]).expect("cert");
        second.write(&v2, "tls").expect("write");
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).expect("ln");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("mv");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while served(&store) != der(&second.cert_pem) {
            assert!(std::time::Instant::now() < deadline, "rotation not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.cert_reloads.get(), 2);
        task.abort();
    }

    #[tokio::test]
    async fn the_watchers_own_reads_of_plain_files_do_not_trigger_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        // Plain files, as in the dev stack's .dev/certs: their opens show in the directory.
        ca.serving(&["127.0.0.1"])
            .expect("cert")
            .write(dir.path(), "tls")
            .expect("write");
        let store = Arc::new(CertStore::new(
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
        ));
        // A long poll: any read after the first two (start, first tick) is the watcher's own.
        let task = tokio::spawn(watch(
            store.clone(),
            Duration::from_secs(3600),
            Arc::new(Metrics::default()),
        ));
        while !store.is_loaded() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = opens.clone();
        let mut spy = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| matches!(e.kind, EventKind::Access(AccessKind::Open(_)))) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .expect("watcher");
        spy.watch(dir.path(), RecursiveMode::NonRecursive)
            .expect("watch");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let opened = opens.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            opened, 0,
            "the files were opened {opened} times while nothing changed"
        );
        task.abort();
    }

    #[test]
    fn a_pair_read_across_a_rotation_is_read_again_not_counted_as_failed() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        let old = ca.serving(&["127.0.0.1"]).expect("cert");
        let new = ca.serving(&["127.0.0.1"]).expect("cert");
        // FIFOs, so the test decides what each read returns, in the order the store reads:
        // a writer's open waits until the store opens that file.
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        for fifo in [&crt, &key] {
            let made = std::process::Command::new("mkfifo")
                .arg(fifo)
                .status()
                .expect("mkfifo");
            assert!(made.success(), "mkfifo failed");
        }
        let store = CertStore::new(crt.clone(), key.clone());
        let feed = |path: &std::path::Path, pem: &str| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open fifo");
            f.write_all(pem.as_bytes()).expect("write fifo");
        };
        let (old_cert, new_pair) = (old.cert_pem.clone(), new.clone());
        // Not joined: without a second read it would wait for one forever.
        std::thread::spawn(move || {
            // The rotation lands between the two reads: the old certificate, the new key.
            feed(&crt, &old_cert);
            feed(&key, &new_pair.key_pem);
            // Read again: the new pair, whole.
            feed(&crt, &new_pair.cert_pem);
            feed(&key, &new_pair.key_pem);
        });
        let metrics = Metrics::default();
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_reload_failures.get(), 0);
        assert_eq!(metrics.cert_reloads.get(), 1);
        assert_eq!(served(&store), der(&new.cert_pem));
    }

    /// A self-signed pair for 127.0.0.1 that expires at midnight UTC of that day.
    fn expiring(year: i32, month: u8, day: u8) -> taskrun_certs::Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let cert = params.self_signed(&key).expect("cert");
        taskrun_certs::Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// `date -u -d 2031-01-02T00:00:00Z +%s`
    const JAN_2_2031: i64 = 1_925_078_400;

    /// A store serving a pair that expires on 2031-01-02, loaded and counted.
    fn serving_2031() -> (tempfile::TempDir, CertStore, Metrics) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CertStore::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let metrics = Metrics::default();
        expiring(2031, 1, 2)
            .write(dir.path(), "tls")
            .expect("write");
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_expiry.get(), JAN_2_2031);
        (dir, store, metrics)
    }

    #[test]
    fn the_expiry_gauge_is_the_served_certificates_not_after() {
        let (dir, store, metrics) = serving_2031();

        let renewed = expiring(2032, 6, 30);
        renewed.write(dir.path(), "tls").expect("write");
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_expiry.get(), 1_972_166_400);

        // A pair that does not load leaves the gauge at what is still served.
        std::fs::write(dir.path().join("tls.crt"), "garbage").expect("write");
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_reload_failures.get(), 1);
        assert_eq!(metrics.cert_expiry.get(), 1_972_166_400);
    }

    /// An old pair written back over a valid one (a Secret restored from an old copy) is
    /// refused and counted; the valid one keeps serving. With nothing valid served, it loads:
    /// it fails no more handshakes than what it replaces.
    #[test]
    fn an_expired_pair_does_not_replace_a_valid_one() {
        let (dir, store, metrics) = serving_2031();
        let valid = served(&store);

        let old = expiring(2020, 1, 1);
        old.write(dir.path(), "tls").expect("write");
        let failed = store.reload();
        assert!(
            matches!(&failed, Reload::Failed(TlsError::Expired { .. })),
            "{failed:?}"
        );
        assert!(matches!(store.reload(), Reload::Unchanged), "counted once");
        assert_eq!(served(&store), valid);
        // Through the logging path, which the server uses: one failure, the gauge unmoved.
        expiring(2021, 1, 1)
            .write(dir.path(), "tls")
            .expect("write");
        store.reload_logged(&metrics);
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_reload_failures.get(), 1);
        assert_eq!(metrics.cert_reloads.get(), 1);
        assert_eq!(metrics.cert_expiry.get(), JAN_2_2031);
        assert_eq!(served(&store), valid);

        // An expired pair served, then another expired one: the newer files are served.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = CertStore::new(
            other_dir.path().join("tls.crt"),
            other_dir.path().join("tls.key"),
        );
        old.write(other_dir.path(), "tls").expect("write");
        assert!(matches!(
            other.reload(),
            Reload::Loaded { not_after: Ok(_) }
        ));
        assert_eq!(served(&other), der(&old.cert_pem));
        let older = expiring(2019, 1, 1);
        older.write(other_dir.path(), "tls").expect("write");
        assert!(matches!(other.reload(), Reload::Loaded { .. }));
        assert_eq!(served(&other), der(&older.cert_pem));
    }

    /// A leaf rustls accepts but the X.509 parser refuses (its notAfter names month 13; rustls
    /// reads neither the validity nor the signature of its own certificate): served, with the
    /// expiry gauge at 0 (unknown), not the previous certificate's date.
    #[test]
    fn a_certificate_whose_expiry_cannot_be_read_is_served_with_the_gauge_at_0() {
        let (dir, store, metrics) = serving_2031();

        let pair = expiring(2032, 6, 30);
        let mut leaf = der(&pair.cert_pem);
        let at = leaf
            .windows(13)
            .position(|w| w == b"320630000000Z")
            .expect("notAfter as UTCTime");
        leaf[at..at + 13].copy_from_slice(b"321330000000Z");
        assert!(not_after(&leaf).is_err(), "the parser should refuse it");
        taskrun_certs::Pair {
            cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", leaf.clone())),
            key_pem: pair.key_pem,
        }
        .write(dir.path(), "tls")
        .expect("write");
        store.reload_logged(&metrics);
        assert_eq!(metrics.cert_reload_failures.get(), 0);
        assert_eq!(metrics.cert_reloads.get(), 2);
        assert_eq!(served(&store), leaf);
        assert_eq!(metrics.cert_expiry.get(), 0);

        // Nothing known to be valid is served: an expired pair may replace it.
        let old = expiring(2020, 1, 1);
        old.write(dir.path(), "tls").expect("write");
        store.reload_logged(&metrics);
        assert_eq!(served(&store), der(&old.cert_pem));
    }

    #[test]
    fn a_certificate_read_that_never_returns_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test").expect("ca");
        ca.serving(&["127.0.0.1"])
            .expect("cert")
            .write(dir.path(), "tls")
            .expect("write");
        // A FIFO nobody writes to: opening it for reading blocks until the test process ends.
        let key = dir.path().join("tls.key");
        std::fs::remove_file(&key).expect("rm");
        let made = std::process::Command::new("mkfifo")
            .arg(&key)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo failed");
        let store = Arc::new(CertStore::new(dir.path().join("tls.crt"), key));

        // The webhook's runtime: one thread. Its timers must keep firing while a read hangs.
        let (ticked, ticks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let metrics = Arc::new(Metrics::default());
                tokio::spawn(watch(store, Duration::from_millis(10), metrics));
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = ticked.send(());
                }
            });
            runtime.shutdown_background();
        });
        for n in 0..20 {
            assert!(
                ticks.recv_timeout(Duration::from_secs(5)).is_ok(),
                "the runtime stalled after {n} timer ticks"
            );
        }
    }
}
