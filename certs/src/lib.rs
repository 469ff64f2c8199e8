//! Certificates for development and tests: a private CA that signs serving certificates
//! (the webhook, the test API server) and client certificates (kubeconfig users, where the
//! common name is the user and the organizations are the groups). Production clusters use
//! cert-manager instead (manifests/overlays/cert-manager).

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// What can go wrong making or writing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot use the CA: {0}")]
    NotACa(&'static str),
    #[error(
        "the CA expires at {ca_expires}, before a certificate it signed now would ({days} days \
         from now): start a new CA (remove ca.crt and ca.key; the caBundle changes with it, \
         docs/install.md)"
    )]
    CaExpiresFirst { ca_expires: String, days: i64 },
    #[error("{0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pair {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir` (the key readable by the owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), Error> {
        write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, 0o600)
    }
}

/// A certificate authority that signs the other certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pair: Pair,
    /// No certificate it signs may outlive it: a client refuses the chain from then on.
    not_after: time::OffsetDateTime,
}

/// How long a serving or client certificate is valid.
const LEAF_DAYS: i64 = 365;

impl Ca {
    /// A new self-signed CA, valid for ten years.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pair = Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// The CA of an earlier run, from its certificate and key (PEM), to sign new certificates
    /// that chain to the same CA.
    pub fn from_pem(pair: Pair) -> Result<Self, Error> {
        let key = KeyPair::from_pem(&pair.key_pem)
            .map_err(|_| Error::NotACa(unusable_key(&pair.key_pem)))?;
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes()).map_err(|_| {
                Error::NotACa(
                    "not a PEM certificate: remove ca.crt and ca.key to start with a new CA",
                )
            })?;
        let cert = pem.parse_x509().map_err(|_| {
            Error::NotACa(
                "not an X.509 certificate: remove ca.crt and ca.key to start with a new CA",
            )
        })?;
        if !cert.is_ca() {
            return Err(Error::NotACa(
                "the certificate is not a CA's (no basicConstraints CA:TRUE), and clients \
                 refuse what it signs: give a CA's certificate and key, or remove ca.crt and \
                 ca.key to start with a new CA",
            ));
        }
        if cert.public_key().raw != key.subject_public_key_info() {
            return Err(Error::NotACa(
                "the key is not the certificate's: give the CA's own key, or remove ca.crt and \
                 ca.key to start with a new CA",
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)?;
        Ok(Self {
            issuer,
            pair,
            not_after,
        })
    }

    /// The CA certificate (a caBundle or `--client-ca-file`) and key.
    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    /// A serving certificate for these hosts (DNS names or IP addresses), valid for a year.
    pub fn serving(&self, hosts: &[&str]) -> Result<Pair, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(hosts.first().copied().unwrap_or("localhost"), &[]);
        params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, LEAF_DAYS);
        self.sign(params)
    }

    /// A client certificate for user `user` in `groups`, as the API server reads them.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Pair, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, LEAF_DAYS);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pair, Error> {
        if params.not_after > self.not_after {
            return Err(Error::CaExpiresFirst {
                ca_expires: self
                    .not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| self.not_after.to_string()),
                days: LEAF_DAYS,
            });
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The hosts (DNS names and IP addresses) a PEM certificate is valid for, in its order; None
/// when it cannot be read or names none.
pub fn hosts_of(cert_pem: &str) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let names = cert.subject_alternative_name().ok()??;
    let hosts: Vec<String> = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
            }
            .map(|ip| ip.to_string()),
            _ => None,
        })
        .collect();
    (!hosts.is_empty()).then_some(hosts)
}

/// A key pair for signing service-account tokens (`--service-account-signing-key-file`),
/// as a PKCS#8 PEM private key.
pub fn signing_key_pem() -> Result<String, Error> {
    Ok(KeyPair::generate()?.serialize_pem())
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn
}

/// Why a CA key (PEM) cannot be used, and what to do: most keys of another encoding can be
/// converted in place, keeping the CA (and so the caBundle).
fn unusable_key(pem: &str) -> &'static str {
    if pem.contains("-----BEGIN RSA PRIVATE KEY-----")
        || pem.contains("-----BEGIN EC PRIVATE KEY-----")
    {
        "the key is not PKCS#8 (it is an `RSA PRIVATE KEY` or `EC PRIVATE KEY`): convert it in \
         place, keeping the CA, with `openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.key.p8 \
         && mv ca.key.p8 ca.key`"
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "the key is encrypted: decrypt it in place, keeping the CA, with `openssl pkcs8 -in \
         ca.key -out ca.key.p8 && mv ca.key.p8 ca.key`"
    } else {
        "the key is not a PEM private key of a type this tool signs with (PKCS#8: RSA, ECDSA \
         P-256 or P-384, Ed25519): give the CA's key in that form, or remove ca.crt and ca.key \
         to start with a new CA"
    }
}

fn san(host: &str) -> Result<SanType, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns_name = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !dns_name {
        return Err(Error::BadHost(host.to_owned()));
    }
    host.try_into()
        .map(SanType::DnsName)
        .map_err(|_| Error::BadHost(host.to_owned()))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Writes `contents` into a new file with `mode` and renames it over `path`, so a key never
/// lands in a file that had another mode, nor in one a reader already holds open.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    // One left by a process of this pid that died mid-write.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            // On disk before it is renamed into place: after a power loss, the old file or
            // the whole new one, never an empty key.
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        // Best effort: the file is in place either way, and some filesystems refuse to sync
        // a directory.
        let _ = sync_dir(path);
    }
    written.map_err(err)
}

/// Makes a rename in the directory of `path` durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_over_a_readable_file_is_no_longer_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("taskrun-certs-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tls.key");
        std::fs::write(&path, "old").expect("old key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&path, "new", 0o600).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        let contents = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(mode, 0o600);
        assert_eq!(contents, "new");
    }

    #[test]
    fn serving_and_client_certificates_are_pem() {
        let ca = Ca::new("test-ca").expect("ca");
        let serving = ca.serving(&["localhost", "127.0.0.1"]).expect("serving");
        let client = ca.client("alice", &["system:masters"]).expect("client");
        for pair in [ca.pair(), &serving, &client] {
            assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(pair.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        assert_ne!(serving.cert_pem, client.cert_pem);
    }

    #[test]
    fn a_reloaded_ca_signs_certificates_that_chain_to_it() {
        use x509_parser::pem::parse_x509_pem;
        let ca = Ca::new("test-ca").expect("ca");
        let reloaded = Ca::from_pem(ca.pair().clone()).expect("reloaded");
        let serving = reloaded.serving(&["localhost"]).expect("serving");
        let (_, ca_pem) = parse_x509_pem(ca.pair().cert_pem.as_bytes()).expect("CA PEM");
        let (_, serving_pem) = parse_x509_pem(serving.cert_pem.as_bytes()).expect("PEM");
        let ca_cert = ca_pem.parse_x509().expect("CA");
        let serving_cert = serving_pem.parse_x509().expect("serving");
        assert_eq!(serving_cert.issuer(), ca_cert.subject());
        serving_cert
            .verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the original CA's key");

        let other = Ca::new("other-ca").expect("ca");
        let mixed = Pair {
            cert_pem: ca.pair().cert_pem.clone(),
            key_pem: other.pair().key_pem.clone(),
        };
        assert!(matches!(Ca::from_pem(mixed), Err(Error::NotACa(_))));
        let garbage = Pair {
            cert_pem: "not a certificate".into(),
            key_pem: ca.pair().key_pem.clone(),
        };
        assert!(matches!(Ca::from_pem(garbage), Err(Error::NotACa(_))));
    }

    /// A certificate made here with `params` (self-signed), as a CA of an earlier run would be.
    fn reused(mut params: CertificateParams) -> Pair {
        params.distinguished_name = name("reused", &[]);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn a_certificate_that_is_no_ca_is_not_reused_as_one() {
        let leaf = reused(CertificateParams::default());
        let Err(Error::NotACa(why)) = Ca::from_pem(leaf) else {
            panic!("a leaf certificate was taken for a CA");
        };
        assert!(why.contains("CA:TRUE"), "{why}");
    }

    #[test]
    fn a_ca_that_expires_before_what_it_would_sign_signs_nothing() {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut params, 30);
        let ca = Ca::from_pem(reused(params)).expect("a CA, for 30 days more");
        let refused = ca.serving(&["localhost"]);
        assert!(
            matches!(
                refused,
                Err(Error::CaExpiresFirst {
                    days: LEAF_DAYS,
                    ..
                })
            ),
            "{:?}",
            refused.map(|p| p.cert_pem)
        );
        // One made here lasts ten years.
        assert!(
            Ca::new("test-ca")
                .expect("ca")
                .serving(&["localhost"])
                .is_ok()
        );
    }

    /// A throwaway P-256 key as `openssl ecparam -name prime256v1 -genkey -noout` writes it
    /// (SEC1), which rcgen on ring does not read.
    const SEC1_KEY: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIKHuezaQLSubfLGXEq4ySH9GiKwNquwlGRsdu+NxLLWToAoGCCqGSM49\n\
AwEHoUQDQgAE9C7DF/rwwLcZcil0B8iG4T3cM8voyYmwv/LojyQ2CRjXJZW2A9rx\n\
9Pj3BS8VVngCt45suQGkBw6AtdBbYYf8nQ==\n\
-----END EC PRIVATE KEY-----\n\
";

    #[test]
    fn a_ca_key_that_is_not_pkcs8_is_told_how_to_convert_it() {
        let ca = Ca::new("test-ca").expect("ca");
        let sec1 = Pair {
            cert_pem: ca.pair().cert_pem.clone(),
            key_pem: SEC1_KEY.into(),
        };
        let Err(Error::NotACa(why)) = Ca::from_pem(sec1) else {
            panic!("an EC PRIVATE KEY was read");
        };
        assert!(why.contains("openssl pkcs8 -topk8"), "{why}");
        assert!(!why.contains("new CA"), "{why}");
    }

    #[test]
    fn the_hosts_of_a_certificate_are_read_back_in_order() {
        let ca = Ca::new("test-ca").expect("ca");
        let hosts = ["taskrun-webhook.taskrun-system.svc", "127.0.0.1", "::1"];
        let serving = ca.serving(&hosts).expect("serving");
        assert_eq!(
            hosts_of(&serving.cert_pem),
            Some(hosts.map(str::to_owned).to_vec())
        );
        assert_eq!(hosts_of(&ca.pair().cert_pem), None, "a CA names no host");
        assert_eq!(hosts_of("garbage"), None);
    }

    #[test]
    fn a_host_that_is_no_name_is_refused() {
        let ca = Ca::new("test-ca").expect("ca");
        assert!(matches!(
            ca.serving(&["not a host!"]),
            Err(Error::BadHost(_))
        ));
    }
}
