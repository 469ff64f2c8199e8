//! How the webhook, the controller and the plugin connect to the API server.
//!
//! kube's client retries the API server's "not now" answers (429 Too Many Requests, 503, 504)
//! by itself unless told not to: up to 15 times, waiting from 5 ms doubling to minutes, so one
//! request could go on for several minutes while the caller knew nothing (the controller's
//! reconcile slots asleep, the plugin seemingly hung), and every request of a process drew the
//! same "random" waits, so requests refused together came back together. Here a request is
//! retried `RETRIES` times, each wait what the API server asked for (`Retry-After`) or a short
//! doubling one, at most `MAX_WAIT`, stretched by a random share of its own; past that the
//! answer reaches the caller, whose own backoff (per TaskRun, per watch, per release) decides.
//! A retried list page stays where it was instead of the whole list starting over.

pub mod proxy;

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder};
use taskrun::client::{READ_TIMEOUT, retry_delay};
use tower::BoxError;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;

/// Retries of one request answered 429, 503 or 504.
pub const RETRIES: u32 = 3;

/// The first wait when the API server names none; doubled per retry.
const BASE_WAIT: Duration = Duration::from_millis(200);

/// The longest wait before a retry, whatever the API server asks, before the jitter (which
/// stretches it by up to half).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Requests queued for the retry layer (kube's own client queues as many).
const QUEUED: usize = 1024;

/// A client for `config` with the read timeout and the retries above (kube's own retries off).
pub fn client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.read_timeout = Some(READ_TIMEOUT);
    config.default_retry = false;
    Ok(ClientBuilder::try_from(config)?
        // A retry sends the request again through a clone of what is under it.
        .with_layer(&BufferLayer::new(QUEUED))
        .with_layer(&RetryLayer::new(Retry::default()))
        .build())
}

/// The wait before retry `attempt` (from 1): what the API server asked for, or `BASE_WAIT`
/// doubled per retry, at most `MAX_WAIT`, stretched by up to half again as `unit` (uniform in
/// [0, 1)) says.
pub fn wait(attempt: u32, asked: Option<Duration>, unit: f64) -> Duration {
    let wait = asked.unwrap_or_else(|| retry_delay(attempt, BASE_WAIT, MAX_WAIT));
    wait.min(MAX_WAIT).mul_f64(1.0 + 0.5 * unit.clamp(0.0, 1.0))
}

/// The retry policy of one request: how many times it was retried.
#[derive(Clone, Default)]
struct Retry {
    attempt: u32,
}

fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `Retry-After` in seconds, the form the API server sends.
fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let value = response.headers().get(http::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

impl<B> tower::retry::Policy<Request<Body>, Response<B>, BoxError> for Retry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let response = result.as_ref().ok()?;
        if !retryable(response.status()) || self.attempt >= RETRIES {
            return None;
        }
        self.attempt += 1;
        let wait = wait(self.attempt, retry_after(response), fastrand::f64());
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request<Body>) -> Option<Request<Body>> {
        // A body that cannot be cloned (a stream) is sent once.
        let body = request.body().try_clone()?;
        let mut clone = Request::builder()
            .method(request.method().clone())
            .uri(request.uri().clone())
            .version(request.version())
            .body(body)
            .ok()?;
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::retry::Policy;

    #[test]
    fn waits_double_from_the_base_or_take_what_is_asked_within_the_cap() {
        let ms = |d: Duration| d.as_millis();
        assert_eq!([1, 2, 3].map(|a| ms(wait(a, None, 0.0))), [200, 400, 800]);
        assert_eq!(ms(wait(1, Some(Duration::from_secs(1)), 0.0)), 1000);
        assert_eq!(ms(wait(1, Some(Duration::from_secs(3600)), 0.0)), 5000);
        assert_eq!(ms(wait(1, None, 0.999_999)), 299);
        assert_eq!(ms(wait(30, None, 1.5)), 7500, "capped, jitter at most half");
    }

    fn answer(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut response = Response::builder().status(status);
        if let Some(seconds) = retry_after {
            response = response.header("Retry-After", seconds);
        }
        Ok(response.body(()).expect("a response"))
    }

    #[tokio::test(start_paused = true)]
    async fn not_now_answers_are_retried_a_few_times_and_nothing_else() {
        let mut request = Request::new(Body::empty());
        let mut policy = Retry::default();
        for _ in 0..RETRIES {
            let wait = policy
                .retry(&mut request, &mut answer(429, Some("1")))
                .expect("retried");
            let started = tokio::time::Instant::now();
            wait.await;
            let waited = started.elapsed();
            // At most half again, and the timer's millisecond of rounding.
            assert!(
                waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1501),
                "{waited:?}"
            );
        }
        assert!(
            policy.retry(&mut request, &mut answer(503, None)).is_none(),
            "no more than {RETRIES}"
        );
        for status in [200, 201, 400, 403, 404, 409, 410, 422, 500] {
            let mut fresh = Retry::default();
            assert!(
                fresh
                    .retry(&mut request, &mut answer(status, None))
                    .is_none(),
                "{status}"
            );
        }
        for status in [503, 504] {
            assert!(
                Retry::default()
                    .retry(&mut request, &mut answer(status, Some("soon")))
                    .is_some()
            );
        }
        let mut failed: Result<Response<()>, BoxError> = Err("connection refused".into());
        assert!(Retry::default().retry(&mut request, &mut failed).is_none());
    }

    #[test]
    fn a_request_is_cloned_with_its_method_headers_and_body() {
        let request = Request::post("https://api/apis/x")
            .header("content-type", "application/json")
            .body(Body::from(b"{}".to_vec()))
            .expect("a request");
        let clone = Policy::<Request<Body>, Response<()>, BoxError>::clone_request(
            &mut Retry::default(),
            &request,
        )
        .expect("cloned");
        assert_eq!(clone.method(), "POST");
        assert_eq!(clone.uri(), "https://api/apis/x");
        assert_eq!(clone.headers()["content-type"], "application/json");
    }
}
