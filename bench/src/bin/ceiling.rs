//! The ceiling for `webhook_throughput_vs_ceiling`: the least an admission server over TLS
//! can do — accept, read the whole request body, answer a canned allowed AdmissionReview of
//! the same size as the webhook's. Same hyper, rustls and TLS settings as the webhook.
//!
//!     ceiling --listen 127.0.0.1:9443 --cert tls.crt --key tls.key [--response-bytes N]

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Size of the canned response body (pad to the webhook's typical response).
    #[arg(long, default_value_t = 200)]
    response_bytes: usize,
}

fn canned(size: usize) -> Bytes {
    let base = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true,"status":{"code":200,"message":""#;
    let tail = r#""}}}"#;
    let pad = size.saturating_sub(base.len() + tail.len());
    Bytes::from(format!("{base}{}{tail}", " ".repeat(pad)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let acceptor = TlsAcceptor::from(taskrun_bench::tls::server_config(&args.cert, &args.key)?);
    let listener = TcpListener::bind(args.listen).await?;
    let body = canned(args.response_bytes);
    println!("ceiling listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    request.into_body().collect().await?;
                    let response = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(body))
                        .expect("static response parts are valid");
                    Ok::<_, hyper::Error>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
