//! 429s, 503s, silence and absence in front of the real API server.
//!
//! The harness runs kube-apiserver with API Priority and Fairness off (one client, nothing to
//! protect), so its own 429s cannot be provoked. Instead a TLS-terminating proxy sits in front
//! of it: it forwards bytes as they are (watches included) and, on demand, answers requests
//! with 429 or 503 itself (every request, or only those of one kind), counting them; holds
//! requests of one kind until told to pass them on; freezes or cuts its connections; or
//! refuses new ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::controller::Controller;
use crate::{ControlPlane, identity, work_dir};

/// PEM files of a TLS identity.
fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pem_key(path: &Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Requests whose request line (`GET /api/v1/...`) contains every one of `parts`, and what is
/// done with them.
#[derive(Clone)]
struct Picked {
    parts: Vec<String>,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Refuse,
    Hold,
    Pass,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// Points at the proxy, which authenticates upstream as its user.
    pub kubeconfig: PathBuf,
    away: Arc<AtomicBool>,
    /// Requests picked out by their request line, and what is done with them.
    picked: Arc<Mutex<Option<Picked>>>,
    refused: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    /// The request line of every request judged since the last pick.
    seen: Arc<Mutex<Vec<String>>>,
    release: tokio::sync::watch::Sender<u64>,
    cut: tokio::sync::watch::Sender<u64>,
    freeze: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to `cp`'s API server that authenticates as `user`; returns it with a kubeconfig
    /// that points at it.
    pub async fn start(cp: &ControlPlane, user: &str) -> FaultProxy {
        Self::start_as(cp, user, &[]).await
    }

    /// The same, authenticating as `user` in `groups` (`system:masters` for an admin).
    pub async fn start_as(cp: &ControlPlane, user: &str, groups: &[&str]) -> FaultProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // One directory per proxy: two tests of one process may each have a proxy for the
        // same user, and a kubeconfig written over would send one's client to the other's.
        // No ':' in the path: KUBECONFIG is a ':'-separated list.
        static PROXIES: AtomicUsize = AtomicUsize::new(0);
        let n = PROXIES.fetch_add(1, Ordering::Relaxed);
        let dir = work_dir().join(format!("fault-proxy-{}-{n}", user.replace(':', "-")));
        std::fs::create_dir_all(&dir).expect("proxy dir");
        // Upstream: the cluster CA, the user's client certificate.
        let upstream: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cp.kubeconfig_for(user, groups)).expect("kubeconfig"),
        )
        .expect("kubeconfig JSON");
        let file = |v: &serde_json::Value| PathBuf::from(v.as_str().unwrap_or_default());
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(cp.ca_path()) {
            roots.add(cert).expect("CA");
        }
        let identity = &upstream["users"][0]["user"];
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                pem_certs(&file(&identity["client-certificate"])),
                pem_key(&file(&identity["client-key"])),
            )
            .expect("client identity");
        // Downstream: a serving certificate of its own CA, HTTP/1.1 only (one request a
        // connection at a time, so every request in the window can be seen and answered).
        let ca = taskrun_certs::Ca::new("fault-proxy-ca").expect("CA");
        ca.pair().write(&dir, "ca").expect("write CA");
        ca.serving(&["127.0.0.1"])
            .expect("serving")
            .write(&dir, "tls")
            .expect("write");
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                pem_certs(&dir.join("tls.crt")),
                pem_key(&dir.join("tls.key")),
            )
            .expect("server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let kubeconfig = dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {
                "server": format!("https://127.0.0.1:{port}"),
                "certificate-authority": dir.join("ca.crt"),
            }}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        });
        std::fs::write(&kubeconfig, config.to_string()).expect("write kubeconfig");

        let upstream_addr = cp.server_url().trim_start_matches("https://").to_owned();
        let (away, refused) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let picked = Arc::new(Mutex::new(None::<Picked>));
        let held = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (release, _) = tokio::sync::watch::channel(0u64);
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (freeze, _) = tokio::sync::watch::channel(0u64);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let task = tokio::spawn({
            let (refused, cut) = (refused.clone(), cut.clone());
            let (freeze, away) = (freeze.clone(), away.clone());
            let (picked, held, release) = (picked.clone(), held.clone(), release.clone());
            let seen = seen.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    if away.load(Ordering::Relaxed) {
                        // Closed before any TLS: to the client, no API server is there.
                        drop(tcp);
                        continue;
                    }
                    let (acceptor, connector) = (acceptor.clone(), connector.clone());
                    let refused = refused.clone();
                    let (mut cut, upstream_addr) = (cut.subscribe(), upstream_addr.clone());
                    let mut freeze = freeze.subscribe();
                    let (picked, held, release) = (picked.clone(), held.clone(), release.clone());
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let Ok(mut down) = acceptor.accept(tcp).await else {
                            return;
                        };
                        // Subscribed before the pick is read: a release in between still
                        // wakes it.
                        let mut released = release.subscribe();
                        let picking = picked.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        // Picking requests: the first on this connection is judged by its
                        // request line, and passed on asking the API server to close the
                        // connection after answering, so that every request comes on a
                        // connection of its own and is judged.
                        let mut first = Vec::new();
                        if let Some(picked) = picking {
                            let Some(head) = read_head(&mut down).await else {
                                return;
                            };
                            let line = request_line(&head);
                            seen.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(line.clone());
                            if picked.parts.iter().all(|p| line.contains(p.as_str())) {
                                match picked.action {
                                    Action::Refuse => {
                                        refuse(&mut down, &refused).await;
                                        return;
                                    }
                                    Action::Hold => {
                                        held.fetch_add(1, Ordering::Relaxed);
                                        if released.changed().await.is_err() {
                                            return;
                                        }
                                    }
                                    Action::Pass => {}
                                }
                            }
                            first = closing(head);
                        }
                        let Ok(tcp) = tokio::net::TcpStream::connect(&upstream_addr).await else {
                            return;
                        };
                        let name =
                            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                        let Ok(mut up) = connector.connect(name, tcp).await else {
                            return;
                        };
                        if up.write_all(&first).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                            _ = cut.changed() => {}
                            // Both ends stay open, and nothing more passes either way.
                            _ = freeze.changed() => std::future::pending::<()>().await,
                        }
                    });
                }
            }
        });
        FaultProxy {
            kubeconfig,
            away,
            picked,
            refused,
            held,
            seen,
            release,
            cut,
            freeze,
            task,
        }
    }

    /// A proxy that authenticates as the controller's ServiceAccount, with the RBAC of
    /// manifests/base.
    pub async fn for_the_controller(cp: &ControlPlane) -> FaultProxy {
        identity::apply_rbac(cp);
        let user = identity::service_account_user(identity::CONTROLLER_SERVICE_ACCOUNT);
        Self::start(cp, &user).await
    }

    /// From now on every request is answered 429 or 503; open connections are cut.
    pub fn open_window(&self) {
        self.refuse_requests_to(&[]);
    }

    /// A controller for `ns` that reaches the API server through this proxy, started as
    /// [`Controller::start`] starts one.
    pub fn controller(&self, name: &str, ns: &str, extra_args: &[&str]) -> Controller {
        let namespace = format!("--namespace={ns}");
        let args: Vec<&str> = std::iter::once(namespace.as_str())
            .chain(extra_args.iter().copied())
            .collect();
        Controller::start_through(self.kubeconfig.clone(), Some(name), &args)
    }

    /// Every connection open now goes silent for good, without a close or a reset, as when a
    /// NAT entry is dropped; new connections pass as before.
    pub fn freeze_open_connections(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    /// From now on no API server seems to be there: open connections are cut, and new ones
    /// closed at once.
    pub fn go_away(&self) {
        self.away.store(true, Ordering::Relaxed);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn come_back(&self) {
        self.away.store(false, Ordering::Relaxed);
    }

    /// From now on requests are passed on again, those picked by their request line too.
    pub fn close_window(&self) {
        self.pick(None);
    }

    /// From now on only requests whose request line (`GET /api/v1/...?watch=true HTTP/1.1`)
    /// contains every one of `parts` are answered 429 or 503; the others pass, each on a
    /// connection of its own. Open connections are cut.
    pub fn refuse_requests_to(&self, parts: &[&str]) {
        self.pick_from_now(parts, Action::Refuse);
    }

    /// From now on requests whose request line contains every one of `parts` wait in the
    /// proxy until [`release_held`](Self::release_held); the others pass, each on a connection
    /// of its own. Open connections are cut.
    pub fn hold_requests_to(&self, parts: &[&str]) {
        self.pick_from_now(parts, Action::Hold);
    }

    /// From now on every request passes, each on a connection of its own, its request line
    /// kept ([`requests`](Self::requests)). Open connections are cut.
    pub fn note_requests(&self) {
        self.pick_from_now(&[], Action::Pass);
    }

    /// The request lines of the requests judged since the last pick.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Picks the requests whose request line contains every one of `parts`, and cuts open
    /// connections so that every request from now on is judged.
    fn pick_from_now(&self, parts: &[&str], action: Action) {
        self.pick(Some(Picked {
            parts: parts.iter().map(|p| (*p).to_owned()).collect(),
            action,
        }));
        self.cut.send_modify(|n| *n += 1);
    }

    /// Requests held so far.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Passes the held requests on, and holds no more.
    pub fn release_held(&self) {
        self.pick(None);
        self.release.send_modify(|n| *n += 1);
    }

    fn pick(&self, picked: Option<Picked>) {
        *self.picked.lock().unwrap_or_else(|p| p.into_inner()) = picked;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Requests answered 429 or 503 so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a request head: what was read (some of the body may follow the
/// head), or `None` when the connection ended first.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// The request line of a request head: `GET /path HTTP/1.1`.
fn request_line(head: &[u8]) -> String {
    let end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end]).into_owned()
}

/// The request with `Connection: close` as its first header: the API server answers it, then
/// closes the connection.
fn closing(head: Vec<u8>) -> Vec<u8> {
    let end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head.len(), |i| i + 2);
    let mut request = head[..end].to_vec();
    request.extend_from_slice(b"Connection: close\r\n");
    request.extend_from_slice(&head[end..]);
    request
}

/// Answers the request just read 429 (even requests) or 503 (odd), then closes.
async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, refused: &AtomicUsize) {
    let n = refused.fetch_add(1, Ordering::Relaxed);
    let (code, reason, text) = if n.is_multiple_of(2) {
        (429, "TooManyRequests", "Too Many Requests")
    } else {
        (503, "ServiceUnavailable", "Service Unavailable")
    };
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "message": "fault injected by the test proxy", "reason": reason, "code": code})
    .to_string();
    let response = format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}
