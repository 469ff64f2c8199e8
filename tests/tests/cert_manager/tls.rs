//! A TLS client for the webhook that trusts only the CA from the Secret, and what it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS client for the webhook on loopback that opens a new connection per request.
pub(crate) struct LoopbackTls {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl LoopbackTls {
    pub(crate) fn new(addr: SocketAddr, ca_pem: &[u8]) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.unwrap_or_else(|e| panic!("bad CA PEM: {e}"));
            roots.add(cert).unwrap_or_else(|e| panic!("bad CA: {e}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A resumed session reports the certificate of the session it resumes: every
        // connection makes a full handshake so it sees what is served now.
        config.resumption = rustls::client::Resumption::disabled();
        LoopbackTls {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            Vec<u8>,
        ),
        String,
    > {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        Ok((stream, leaf))
    }

    /// The leaf certificate a new connection is served.
    pub(crate) async fn served_leaf(&self) -> Result<Vec<u8>, String> {
        self.connect().await.map(|(_, leaf)| leaf)
    }

    pub(crate) async fn get_ok(&self, path: &str) -> bool {
        matches!(self.request("GET", path, "").await, Ok((_, 200, _)))
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: &str,
    ) -> Result<(Vec<u8>, u16, String), String> {
        self.request("POST", path, body).await
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the served leaf, the status
    /// and the body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(Vec<u8>, u16, String), String> {
        let (mut stream, leaf) = self.connect().await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no response within 10 s".to_owned())?
            .map_err(|e| format!("exchange: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        Ok((leaf, status, body.to_owned()))
    }
}

/// The serial number of a DER certificate: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ... }, ... }.
pub(crate) fn serial(der: &[u8]) -> Vec<u8> {
    /// Splits one DER element off `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            let (bytes, rest) = input.split_at_checked(n)?;
            input = rest;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (contents, rest) = input.split_at_checked(len)?;
        Some((tag, contents, rest))
    }
    let parse = || {
        let (_, certificate, _) = element(der)?;
        let (_, tbs, _) = element(certificate)?;
        let (tag, contents, rest) = element(tbs)?;
        let (tag, contents) = if tag == 0xa0 {
            let (tag, contents, _) = element(rest)?;
            (tag, contents)
        } else {
            (tag, contents)
        };
        (tag == 0x02).then(|| contents.to_vec())
    };
    parse().unwrap_or_else(|| panic!("not a DER certificate"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
