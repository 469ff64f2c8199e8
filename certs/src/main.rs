//! `taskrun-certs`: writes a dev CA and a serving certificate for the webhook into a
//! directory, for clusters without cert-manager:
//!
//!     taskrun-certs --out .dev/certs --host 127.0.0.1 --host localhost
//!
//! writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key`. When the directory already holds
//! `ca.crt` and `ca.key` (an earlier run), that CA is kept and only the serving certificate is
//! new: the caBundle the webhook configurations carry stays valid through a renewal. Without
//! `--host`, the new certificate is for the hosts of the `tls.crt` it replaces.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Write a dev CA and a webhook serving certificate")]
struct Args {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing).
    #[arg(long, default_value = ".dev/certs")]
    out: PathBuf,
    /// DNS name or IP address the serving certificate is valid for (repeatable). Without it,
    /// those of the tls.crt being replaced, else 127.0.0.1 and localhost.
    #[arg(long = "host")]
    hosts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (ca_crt, ca_key) = (args.out.join("ca.crt"), args.out.join("ca.key"));
    let ca = if ca_crt.exists() || ca_key.exists() {
        if !(ca_crt.exists() && ca_key.exists()) {
            anyhow::bail!(
                "{} holds one of ca.crt and ca.key without the other (a run that stopped while \
                 writing them, or a file removed): put the missing one back, or remove the other \
                 to start with a new CA",
                args.out.display()
            );
        }
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let pair = taskrun_certs::Pair {
            cert_pem: read(&ca_crt)?,
            key_pem: read(&ca_key)?,
        };
        taskrun_certs::Ca::from_pem(pair)
            .with_context(|| format!("reusing the CA in {}", args.out.display()))?
    } else {
        let ca = taskrun_certs::Ca::new("taskrun-dev-ca")?;
        ca.pair().write(&args.out, "ca")?;
        ca
    };
    // A renewal run without --host must not make a certificate for other names than the one
    // it replaces: the webhook would load it and the API server refuse it.
    let hosts = if args.hosts.is_empty() {
        let tls_crt = args.out.join("tls.crt");
        match std::fs::read_to_string(&tls_crt) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
            }
            read => read
                .ok()
                .and_then(|pem| taskrun_certs::hosts_of(&pem))
                .with_context(|| {
                    format!(
                        "cannot tell the hosts of {} to renew it for: give them with --host",
                        tls_crt.display()
                    )
                })?,
        }
    } else {
        args.hosts
    };
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    ca.serving(&hosts)
        .with_context(|| {
            format!(
                "signing a serving certificate for {} with the CA in {} (without --host, the \
                 hosts are those of the tls.crt it replaces)",
                hosts.join(", "),
                args.out.display()
            )
        })?
        .write(&args.out, "tls")?;
    println!(
        "wrote {}/tls.{{crt,key}} for {}, signed by the CA in {}/ca.crt",
        args.out.display(),
        hosts.join(", "),
        args.out.display()
    );
    Ok(())
}
