//! Limits on failed sign-ins: console sign-ins with a wrong token and API
//! requests whose bearer token is refused (401) are counted per source
//! address in a token bucket. While a source's bucket is empty, every
//! request of that source that presents credentials (an `authorization`
//! header, or a console sign-in) is answered 429 with `Retry-After`, before
//! it is checked — so a guess made while limited learns nothing. Each
//! failure is logged with its source and path, never with the token.
//!
//! The source is the connection's peer address ([`crate::listen`] attaches
//! it); behind a TLS proxy ([`crate::ServerConfig::behind_tls_proxy`]) it is
//! the last address the proxy appended to `X-Forwarded-For`. A request
//! whose source is unknown (the router served without [`crate::listen`]) is
//! not limited. Buckets live in the instance's memory: each instance limits
//! on its own. Time comes from the server's [`Clock`], so tests move it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fieldsync_core::Clock;
use fieldsync_core::protocol::codes;

use crate::App;
use crate::error::ApiError;

/// How many failed sign-ins a source may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInLimits {
    /// Failures a source may make in a burst (at least 1).
    pub burst: u32,
    /// One more failure is allowed after each such interval (at least 1 ms).
    pub refill_every: Duration,
}

impl Default for SignInLimits {
    /// 20 failures at once, then one every 3 seconds (20 a minute).
    fn default() -> Self {
        Self {
            burst: 20,
            refill_every: Duration::from_secs(3),
        }
    }
}

/// Sources tracked at most; beyond it, the sources whose buckets are full
/// again are forgotten.
const MAX_SOURCES: usize = 100_000;

/// One source's bucket: `tokens` failures left at `at_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Counts failed sign-ins per source address (see the module's text).
pub struct SignInLimiter {
    limits: SignInLimits,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl SignInLimiter {
    /// A limiter with no failures recorded, reading time from `clock`.
    pub fn new(limits: SignInLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            limits: SignInLimits {
                burst: limits.burst.max(1),
                refill_every: limits.refill_every.max(Duration::from_millis(1)),
            },
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill_ms(&self) -> f64 {
        self.limits.refill_every.as_millis() as f64
    }

    /// The bucket of `source` brought to the clock's present.
    fn current(&self, bucket: Option<Bucket>, now: i64) -> Bucket {
        let burst = f64::from(self.limits.burst);
        match bucket {
            None => Bucket {
                tokens: burst,
                at_ms: now,
            },
            Some(b) => {
                let elapsed = now.saturating_sub(b.at_ms).max(0) as f64;
                Bucket {
                    tokens: (b.tokens + elapsed / self.refill_ms()).min(burst),
                    at_ms: now.max(b.at_ms),
                }
            }
        }
    }

    /// `Ok` when `source` may try to sign in now; otherwise the whole
    /// seconds until it may (at least 1).
    pub fn check(&self, source: IpAddr) -> Result<(), u64> {
        let now = self.clock.now_ms();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.current(buckets.get(&source).copied(), now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) * self.refill_ms();
            Err(((wait_ms / 1000.0).ceil() as u64).max(1))
        }
    }

    /// Records a failed sign-in of `source`; returns the failures it has
    /// left before it is limited.
    pub fn failed(&self, source: IpAddr) -> u32 {
        let now = self.clock.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            let burst = f64::from(self.limits.burst);
            buckets.retain(|_, b| self.current(Some(*b), now).tokens < burst);
        }
        let mut bucket = self.current(buckets.get(&source).copied(), now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        buckets.insert(source, bucket);
        bucket.tokens.floor() as u32
    }
}

impl std::fmt::Debug for SignInLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The request's source address (see the module's text).
fn source(request: &Request, behind_proxy: bool) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    if behind_proxy {
        let forwarded = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if let Some(client) = forwarded {
            return Some(client);
        }
    }
    Some(peer)
}

/// True when the request presents credentials to be checked.
fn signs_in(request: &Request) -> bool {
    request.headers().contains_key(header::AUTHORIZATION)
        || (request.method() == Method::POST && request.uri().path() == "/console/login")
}

/// Middleware: refuses sign-ins from a limited source (429) and counts and
/// logs the ones that fail (401).
pub async fn limit_sign_ins(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if !signs_in(&request) {
        return next.run(request).await;
    }
    let Some(source) = source(&request, app.behind_tls_proxy) else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    let console = path.starts_with("/console");
    if let Err(retry_after) = app.sign_ins.check(source) {
        tracing::debug!(%source, path, retry_after, "sign-in refused: too many failures");
        return too_many(console, retry_after);
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let left = app.sign_ins.failed(source);
        tracing::warn!(%source, path, failures_left = left, "failed sign-in");
    }
    response
}

/// The 429 answer: the error body on the API, a page in the console.
fn too_many(console: bool, retry_after: u64) -> Response {
    let message =
        format!("too many failed sign-ins from this address; try again in {retry_after} s");
    let mut response = if console {
        crate::console::response::html_response(
            StatusCode::TOO_MANY_REQUESTS,
            crate::console::html::bare_page(
                "Sign in",
                &crate::console::html::notice(
                    "error",
                    &format!(
                        "Too many failed sign-ins from this address. Try again in {retry_after} seconds."
                    ),
                ),
            ),
        )
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            codes::TOO_MANY_REQUESTS,
            message,
        )
        .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_core::ManualClock;

    fn limiter(clock: &Arc<ManualClock>) -> SignInLimiter {
        SignInLimiter::new(
            SignInLimits {
                burst: 3,
                refill_every: Duration::from_secs(10),
            },
            clock.clone(),
        )
    }

    #[test]
    fn a_source_is_limited_after_its_burst_and_refilled_by_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = limiter(&clock);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            [limiter.failed(a), limiter.failed(a), limiter.failed(a)],
            [2, 1, 0]
        );
        assert_eq!(limiter.check(a), Err(10));
        assert_eq!(limiter.check(b), Ok(()), "another source is not limited");
        clock.advance(4_000);
        assert_eq!(limiter.check(a), Err(6));
        clock.advance(6_000);
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.failed(a), 0);
        assert_eq!(limiter.check(a), Err(10));
        // A long quiet spell refills the burst, no more.
        clock.advance(3_600_000);
        assert_eq!(
            [limiter.failed(a), limiter.failed(a), limiter.failed(a)],
            [2, 1, 0]
        );
    }

    #[test]
    fn a_clock_set_back_does_not_refill_or_panic() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = limiter(&clock);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            limiter.failed(a);
        }
        clock.set(0);
        assert_eq!(limiter.check(a), Err(10));
    }
}
