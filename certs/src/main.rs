//! `taskrun-certs`: writes a dev CA and a serving certificate for the webhook into a
//! directory, for clusters without cert-manager:
//!
//!     taskrun-certs --out .dev/certs --host 127.0.0.1 --host localhost
//!
//! writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Write a dev CA and a webhook serving certificate")]
struct Args {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing).
    #[arg(long, default_value = ".dev/certs")]
    out: PathBuf,
    /// DNS name or IP address the serving certificate is valid for (repeatable).
    #[arg(long = "host", default_values_t = ["127.0.0.1".to_owned(), "localhost".to_owned()])]
    hosts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ca = taskrun_certs::Ca::new("taskrun-dev-ca")?;
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    let serving = ca.serving(&hosts)?;
    ca.pair().write(&args.out, "ca")?;
    serving.write(&args.out, "tls")?;
    println!(
        "wrote {}/{{ca,tls}}.{{crt,key}} for {}",
        args.out.display(),
        hosts.join(", ")
    );
    Ok(())
}
