//! One HTTP request in, one response out: routing, method and content-type checks, the body
//! limit and read timeout, panic recovery, the per-request metrics and log line, and closing
//! HTTP/1 connections once shutting down.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use http_body_util::Full;
use hyper::body::{Body, Bytes};
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use crate::admission::{self, Hook};
use crate::budget::{BodyBudget, ReadError};
use crate::index::Index;
use crate::metrics::{Metrics, Outcome, RequestLabels, RouteLabels};
use crate::tls::CertStore;
use kube::core::Status;

/// Which listener a request came in on: admission is served over TLS only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Tls,
    Plain,
}

pub struct App {
    pub metrics: Arc<Metrics>,
    pub bodies: BodyBudget,
    pub index: Arc<Index>,
    pub certs: Arc<CertStore>,
    pub shutting_down: AtomicBool,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

type Reply = (Response<Full<Bytes>>, &'static str, Outcome);

impl App {
    /// Answers one request; never fails and never unwinds into the connection.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        listener: Listener,
    ) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let route = route_name(req.uri().path());
        let label = route_label(route, req.method(), listener);
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics);
        let (mut response, operation, result) =
            recover(self.clone().route(req, route, listener)).await;
        // Once shutting down, each answer closes its keep-alive connection: the API server
        // pools them, and would go on sending reviews down one until the pod is gone (a
        // request written just as it closes fails the user's apply). Its next review opens a
        // new connection, which the Service sends to a pod still ready.
        if self.shutting_down.load(Ordering::Acquire) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: label,
                operation,
                result,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&RouteLabels { route: label })
            .observe(started.elapsed().as_secs_f64());
        Ok(response)
    }

    async fn route<B>(
        self: Arc<Self>,
        req: Request<B>,
        route: &'static str,
        listener: Listener,
    ) -> Reply
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match (route, listener) {
            ("healthz", _) => (text(StatusCode::OK, "ok"), "", Outcome::allowed),
            ("readyz", _) => self.readyz(),
            ("metrics", _) => {
                let body = self.metrics.encode();
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                (r, "", Outcome::allowed)
            }
            ("validate", Listener::Tls) => self.admit(req, Hook::Validate).await,
            ("mutate", Listener::Tls) => self.admit(req, Hook::Mutate).await,
            _ => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {}", cut(req.uri().path())),
            ),
        }
    }

    fn readyz(&self) -> Reply {
        let mut missing = Vec::new();
        if !self.certs.is_loaded() {
            missing.push("no serving certificate loaded");
        }
        if !self.index.is_ready() {
            missing.push("TaskRun index not synced");
        }
        if self.shutting_down.load(Ordering::Acquire) {
            missing.push("shutting down");
        }
        if missing.is_empty() {
            (text(StatusCode::OK, "ok"), "", Outcome::allowed)
        } else {
            (
                text(StatusCode::SERVICE_UNAVAILABLE, &missing.join("; ")),
                "",
                Outcome::error,
            )
        }
    }

    async fn admit<B>(self: Arc<Self>, req: Request<B>, hook: Hook) -> Reply
    where
        B: Body + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.method() != Method::POST {
            let (mut response, operation, outcome) = refused(
                hook,
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("use POST with an AdmissionReview, not {}", req.method()),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return (response, operation, outcome);
        }
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refused(
                hook,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "send the AdmissionReview as Content-Type: application/json".into(),
            );
        }
        let too_long = || {
            format!(
                "the request body exceeds {} bytes (the webhook's --max-body-bytes, \
                 WEBHOOK_MAX_BODY_BYTES)",
                self.max_body_bytes
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return refused(
                hook,
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                too_long(),
            );
        }
        // Room is held until the answer is ready: for the body and for what is read from it.
        let read = self
            .bodies
            .read(req.into_body(), self.max_body_bytes, self.body_read_timeout);
        let (body, _room) = match read.await {
            Ok(read) => read,
            Err(ReadError::TooLarge) => {
                return refused(
                    hook,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    too_long(),
                );
            }
            Err(ReadError::NoRoom) => {
                return refused(
                    hook,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "too many large request bodies are being read at once; retry shortly".into(),
                );
            }
            Err(ReadError::Broken(e)) => {
                return refused(
                    hook,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("cannot read the request body: {e}"),
                );
            }
            Err(ReadError::TimedOut { arrived }) => {
                let of = declared.map_or_else(String::new, |n| format!(" of {n}"));
                return refused(
                    hook,
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    format!(
                        "the request body did not arrive within {:?} ({arrived}{of} bytes came)",
                        self.body_read_timeout
                    ),
                );
            }
        };
        let answer = admission::admit(hook, &body, &*self.index);
        match answer.outcome {
            Outcome::allowed => tracing::debug!(
                hook = ?hook, uid = %answer.uid, operation = answer.operation,
                object = %answer.object, dry_run = answer.dry_run, "allowed"
            ),
            // Denials are the user's to read (kubectl prints them, the API server audits
            // them); at info they would cost a log write per rejected apply.
            Outcome::denied => tracing::debug!(
                hook = ?hook, uid = %answer.uid, operation = answer.operation,
                object = %answer.object, dry_run = answer.dry_run, detail = %answer.message, "denied"
            ),
            Outcome::error => tracing::warn!(
                hook = ?hook, uid = %answer.uid, operation = answer.operation,
                object = %answer.object, detail = %answer.message, "bad admission request"
            ),
        }
        let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::OK);
        (
            json_response(status, answer.body),
            answer.operation,
            answer.outcome,
        )
    }
}

/// Runs a handler; a panic becomes a 500 with a JSON Status instead of a dead connection.
async fn recover(handler: impl Future<Output = Reply>) -> Reply {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(reply) => reply,
        Err(_) => {
            // The panic hook (taskrun-telemetry) has logged what panicked and where.
            tracing::error!("a request handler panicked; answered 500");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the webhook failed on this request; see its log".into(),
            )
        }
    }
}

fn route_name(path: &str) -> &'static str {
    match path {
        "/validate" => "validate",
        "/mutate" => "mutate",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// The `route` label of a request: `validate` and `mutate` only for what can be an admission
/// call (a POST on the TLS listener), so that their `error` count means reviews the webhook
/// could not decide; the same paths asked otherwise (a scanner's GET, the plain listener,
/// which serves no admission) count as `other`, with the unknown paths.
fn route_label(route: &'static str, method: &Method, listener: Listener) -> &'static str {
    match route {
        "validate" | "mutate" if listener != Listener::Tls || method != Method::POST => "other",
        route => route,
    }
}

/// An admission request refused before its review could be read (wrong method or media type,
/// a body too large, too slow or broken, no room to read it): logged at warn, as a review that
/// cannot be judged is, so that the errors the metrics count can be found in the log.
fn refused(hook: Hook, status: StatusCode, reason: &str, message: String) -> Reply {
    // `detail`, not `message`: that is the line's own text in a JSON log, which has one of each.
    tracing::warn!(hook = ?hook, status = status.as_u16(), detail = %message, "bad admission request");
    error(status, reason, message)
}

/// A `Status` body, as the API server writes its own errors.
fn error(status: StatusCode, reason: &str, message: String) -> Reply {
    let body =
        admission::status_body(&Status::failure(&message, reason).with_code(status.as_u16()));
    (json_response(status, body), "", Outcome::error)
}

/// A 503 (the index not synced, too many bodies being read) says when to ask again: the API
/// server's webhook client (client-go) retries a 5xx only when it carries `Retry-After`, and
/// then does so within the webhook's timeout, so a create made while the index re-lists is
/// admitted a second later instead of failing with "failed calling webhook".
fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Counts a request as in flight until dropped (also when the client goes away mid-request).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.in_flight.inc();
        Self(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests;
