//! Per-client (IP) rate limiting with governor's token buckets: a client
//! over its rate gets 429 with a retry hint, others are not affected.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Per-client token buckets.
pub type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

/// A limiter allowing `per_second` with bursts of `burst`; `None` when the
/// rate is 0 (limiting off).
pub fn client_limiter(per_second: u32, burst: u32) -> Option<Arc<ClientLimiter>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(per_second);
    Some(Arc::new(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    )))
}

/// Answers 429 with a retry hint once a client exceeds its rate.
pub async fn rate_limit(
    State(limiter): State<Arc<ClientLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(not_until) = limiter.check_key(&peer.ip()) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests from this client; slow down",
        );
        error.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        return error.into_response();
    }
    next.run(request).await
}
