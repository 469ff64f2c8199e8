use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};

use super::*;

fn app(synced: bool) -> Arc<App> {
    app_with_metrics(synced, Arc::new(Metrics::default()))
}

fn app_with_metrics(synced: bool, metrics: Arc<Metrics>) -> Arc<App> {
    let index = Index::default();
    if synced {
        index.init();
        index.init_done();
    }
    Arc::new(App {
        metrics,
        bodies: BodyBudget::new(1024, 4),
        index: Arc::new(index),
        certs: Arc::new(CertStore::new(
            "/nonexistent/tls.crt".into(),
            "/nonexistent/tls.key".into(),
        )),
        shutting_down: AtomicBool::new(false),
        max_body_bytes: 1024,
        body_read_timeout: Duration::from_secs(5),
    })
}

fn review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
            "resource": {"group": "orchestrator.io", "version": "v1", "resource": "taskruns"},
            "name": "t", "namespace": "ns", "operation": "CREATE", "userInfo": {},
            "object": {"metadata": {"name": "t", "namespace": "ns"},
                       "spec": {"taskId": 1, "serviceName": "s", "markdownFiles": [{"filename": "task.md", "content": "x"}]}},
        }
    }))
    .expect("json")
}

fn post(path: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::post(path);
    if let Some(ct) = content_type {
        b = b.header(CONTENT_TYPE, ct);
    }
    b.body(Full::new(Bytes::from(body))).expect("request")
}

/// A header of the answer to `req`.
async fn header_of<B>(
    app: &Arc<App>,
    req: Request<B>,
    listener: Listener,
    name: &str,
) -> Option<String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let response = app.clone().handle(req, listener).await.expect("infallible");
    let value = response.headers().get(name)?;
    Some(value.to_str().expect("an ASCII header").to_owned())
}

async fn call<B>(app: &Arc<App>, req: Request<B>, listener: Listener) -> (StatusCode, Value)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let response = app.clone().handle(req, listener).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

#[tokio::test]
async fn admission_is_answered_over_tls_only() {
    let app = app(true);
    let (status, body) = call(
        &app,
        post("/validate", Some("application/json"), review()),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["uid"], "u1");
    assert_eq!(body["response"]["allowed"], true);
    let (status, _) = call(
        &app,
        post("/validate", Some("application/json"), review()),
        Listener::Plain,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = app.metrics.encode();
    assert!(
        text.contains(r#"taskrun_webhook_requests_total{route="validate",operation="CREATE",result="allowed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("taskrun_webhook_requests_in_flight 0"),
        "{text}"
    );
}

/// What no API server sends (a GET on the admission paths, either path on the plain
/// listener) counts as `other`: the admission routes' errors are the reviews that failed.
#[tokio::test]
async fn only_admission_calls_count_under_the_admission_routes() {
    let app = app(true);
    for path in ["/validate", "/mutate"] {
        let get = Request::get(path)
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(
            call(&app, get, Listener::Tls).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let plain = post(path, Some("application/json"), review());
        assert_eq!(
            call(&app, plain, Listener::Plain).await.0,
            StatusCode::NOT_FOUND
        );
    }
    // A POST on the TLS listener is an admission call, even a bad one.
    let bad = post("/mutate", Some("text/plain"), review());
    assert_eq!(
        call(&app, bad, Listener::Tls).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let text = app.metrics.encode();
    assert!(
        text.contains(
            r#"taskrun_webhook_requests_total{route="other",operation="",result="error"} 4"#
        ),
        "{text}"
    );
    // The admission series exist from the start, all still at 0 for validate.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("taskrun_webhook_requests_total{route=\"validate\""))
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        text.contains(
            r#"taskrun_webhook_requests_total{route="mutate",operation="",result="error"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_method_content_type_and_size_are_refused() {
    let app = app(true);
    let get = || {
        Request::get("/mutate")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        call(&app, get(), Listener::Tls).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        header_of(&app, get(), Listener::Tls, "allow")
            .await
            .as_deref(),
        Some("POST")
    );
    let (status, body) = call(
        &app,
        post("/mutate", Some("text/plain"), review()),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["kind"], "Status");
    assert_eq!(
        call(&app, post("/mutate", None, review()), Listener::Tls)
            .await
            .0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let ok = post("/mutate", Some("application/json; charset=utf-8"), review());
    assert_eq!(call(&app, ok, Listener::Tls).await.0, StatusCode::OK);

    // Declared too long: refused before reading.
    let mut declared = post("/mutate", Some("application/json"), vec![b' '; 10]);
    declared
        .headers_mut()
        .insert(CONTENT_LENGTH, "1000000".parse().expect("header"));
    assert_eq!(
        call(&app, declared, Listener::Tls).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Not declared (chunked) and too long: cut at the limit.
    let (status, body) = call(
        &app,
        post("/mutate", Some("application/json"), vec![b' '; 5000]),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("exceeds 1024 bytes (the webhook's --max-body-bytes")),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_times_out() {
    let app = app(true);
    let never = StreamBody::new(futures::stream::pending::<
        Result<Frame<Bytes>, std::io::Error>,
    >());
    let req = Request::post("/validate")
        .header(CONTENT_TYPE, "application/json")
        .body(never)
        .expect("request");
    assert_eq!(
        call(&app, req, Listener::Tls).await.0,
        StatusCode::REQUEST_TIMEOUT
    );
}

/// `n` `/validate` requests that declare the largest body, send `sent` bytes of it and then
/// stall.
fn stalled_requests(
    app: &Arc<App>,
    n: usize,
    sent: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    (0..n)
        .map(|_| {
            let first = futures::stream::iter([Ok(Frame::data(Bytes::from(vec![b' '; sent])))]);
            let stalled = StreamBody::new(futures::StreamExt::chain(
                first,
                futures::stream::pending::<Result<Frame<Bytes>, std::io::Error>>(),
            ));
            let req = Request::post("/validate")
                .header(CONTENT_TYPE, "application/json")
                .header(CONTENT_LENGTH, "1024")
                .body(stalled)
                .expect("request");
            let app = app.clone();
            tokio::spawn(async move { call(&app, req, Listener::Tls).await })
        })
        .collect()
}

fn validate_review(app: &Arc<App>) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let app = app.clone();
    tokio::spawn(async move {
        call(
            &app,
            post("/validate", Some("application/json"), review()),
            Listener::Tls,
        )
        .await
    })
}

#[tokio::test]
async fn bodies_beyond_the_budget_wait_their_turn() {
    let app = app(true);
    // Four requests that have sent the largest body's bytes and stall take the whole budget,
    // and a fifth the overdraft.
    let holders = stalled_requests(&app, 5, 1024);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = validate_review(&app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "a body was read beyond the budget");
    for h in holders {
        h.abort();
    }
    let (status, body) = next.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
}

/// A length declared is not room taken: requests that declare the largest body and send
/// nothing hold none of the budget, and a review is answered meanwhile (it waited for the
/// body read timeout, then got 503, when room was reserved for the declared length).
#[tokio::test]
async fn bodies_declared_but_not_sent_hold_no_room() {
    let app = app(true);
    let stalled = stalled_requests(&app, 5, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(1), validate_review(&app))
        .await
        .expect("answered while the others stall")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
    for s in stalled {
        s.abort();
    }
}

#[tokio::test]
async fn validation_waits_for_the_index() {
    let app = app(false);
    let (status, _) = call(
        &app,
        post("/validate", Some("application/json"), review()),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The API server's webhook client asks again only when told when to.
    let create = post("/validate", Some("application/json"), review());
    assert_eq!(
        header_of(&app, create, Listener::Tls, "retry-after")
            .await
            .as_deref(),
        Some("1")
    );
    // Only a create asks the index: an update (the controller's finalizer, a user's edit)
    // is answered while it re-syncs.
    let mut update: Value = serde_json::from_slice(&review()).expect("json");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let (status, body) = call(
        &app,
        post(
            "/validate",
            Some("application/json"),
            serde_json::to_vec(&update).expect("json"),
        ),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
    // Mutation does not need it.
    let (status, _) = call(
        &app,
        post("/mutate", Some("application/json"), review()),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// What docs/metrics.md alerts on: a denial is the user's (`denied`), a CREATE the index
/// cannot answer yet is the webhook's (`error`).
#[tokio::test]
async fn denials_and_unsynced_creates_are_counted_apart() {
    let mut empty: Value = serde_json::from_slice(&review()).expect("json");
    empty["request"]["object"]["spec"]["markdownFiles"] = json!([]);
    let empty = serde_json::to_vec(&empty).expect("json");
    let app = app(true);
    let (status, body) = call(
        &app,
        post("/validate", Some("application/json"), empty),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], false);

    let unsynced = app_with_metrics(false, app.metrics.clone());
    let (status, _) = call(
        &unsynced,
        post("/validate", Some("application/json"), review()),
        Listener::Tls,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let text = app.metrics.encode();
    let mut counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("taskrun_webhook_requests_total{") && !l.ends_with(" 0"))
        .collect();
    counted.sort_unstable();
    assert_eq!(
        counted,
        [
            r#"taskrun_webhook_requests_total{route="validate",operation="CREATE",result="denied"} 1"#,
            r#"taskrun_webhook_requests_total{route="validate",operation="CREATE",result="error"} 1"#,
        ],
        "{text}"
    );
}

#[tokio::test]
async fn ready_only_with_a_certificate_and_a_synced_index_and_not_after_sigterm() {
    let readyz = || {
        Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let app = app(false);
    let (status, body) = call(&app, readyz(), Listener::Plain).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        header_of(&app, readyz(), Listener::Plain, "content-type")
            .await
            .as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        body.as_str()
            .is_some_and(|b| b.contains("no serving certificate") && b.contains("not synced")),
        "{body}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = taskrun_certs::Ca::new("t").expect("ca");
    ca.serving(&["127.0.0.1"])
        .expect("cert")
        .write(dir.path(), "tls")
        .expect("write");
    let certs = Arc::new(CertStore::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    ));
    certs.reload();
    let index = Index::default();
    index.init();
    index.init_done();
    let app = Arc::new(App {
        bodies: BodyBudget::new(1024, 4),
        certs,
        index: Arc::new(index),
        metrics: app.metrics.clone(),
        shutting_down: AtomicBool::new(false),
        max_body_bytes: 1024,
        body_read_timeout: Duration::from_secs(1),
    });
    assert_eq!(call(&app, readyz(), Listener::Tls).await.0, StatusCode::OK);
    app.shutting_down.store(true, Ordering::Release);
    assert_eq!(
        call(&app, readyz(), Listener::Tls).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let health = Request::get("/healthz")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(call(&app, health, Listener::Tls).await.0, StatusCode::OK);
}

#[tokio::test]
async fn once_shutting_down_answers_close_their_connection() {
    let app = app(true);
    let answer = || {
        let req = post("/validate", Some("application/json"), review());
        app.clone().handle(req, Listener::Tls)
    };
    let closes = |r: &Response<Full<Bytes>>| {
        r.headers().get(CONNECTION) == Some(&HeaderValue::from_static("close"))
    };
    let before = answer().await.expect("infallible");
    assert_eq!(before.status(), StatusCode::OK);
    assert!(!closes(&before), "{:?}", before.headers());

    app.shutting_down.store(true, Ordering::Release);
    let draining = answer().await.expect("infallible");
    assert_eq!(draining.status(), StatusCode::OK);
    assert!(closes(&draining), "{:?}", draining.headers());
}

#[tokio::test]
async fn a_panic_while_answering_becomes_a_500() {
    // The request's body panics as it is read: inside the handler, as a bug there would.
    let panicking = StreamBody::new(futures::stream::poll_fn(
        |_| -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            panic!("a body that panics")
        },
    ));
    let req = Request::post("/validate")
        .header(CONTENT_TYPE, "application/json")
        .body(panicking)
        .expect("request");
    let app = app(true);
    let (status, body) = call(&app, req, Listener::Tls).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], 500);
    // Counted as an error, as any other answer is counted.
    let metrics = app.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("result=\"error\"") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// A writer of log lines into a buffer the test reads.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("unpoisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_json_log_line_of_a_refused_or_denied_review_has_one_message() {
    let captured = Captured::default();
    let writer = captured.clone();
    // As `taskrun_telemetry::init` logs under --log-format=json.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app(true);
    // Refused before reading, a review that cannot be read, and a denial.
    call(
        &app,
        post("/validate", Some("text/plain"), review()),
        Listener::Tls,
    )
    .await;
    call(
        &app,
        post("/validate", Some("application/json"), b"{}".to_vec()),
        Listener::Tls,
    )
    .await;
    let mut empty: Value = serde_json::from_slice(&review()).expect("json");
    empty["request"]["object"]["spec"]["markdownFiles"][0]["content"] = json!("");
    let denied = serde_json::to_vec(&empty).expect("json");
    call(
        &app,
        post("/validate", Some("application/json"), denied),
        Listener::Tls,
    )
    .await;

    let log = String::from_utf8(captured.0.lock().expect("unpoisoned").clone()).expect("UTF-8");
    let mut headlines = Vec::new();
    for line in log.lines() {
        // Two keys of one name are legal to write but not to read: most readers keep the last.
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        let fields: Value = serde_json::from_str(line).expect("a JSON line");
        headlines.push((
            fields["message"].as_str().unwrap_or_default().to_owned(),
            fields["detail"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let said = |headline: &str, detail: &str| {
        headlines
            .iter()
            .any(|(h, d)| h == headline && d.contains(detail))
    };
    assert!(
        said("bad admission request", "Content-Type: application/json"),
        "{log}"
    );
    assert!(said("bad admission request", "AdmissionReview"), "{log}");
    assert!(said("denied", "task.md"), "{log}");
}
