//! Per-client rate limiting with governor's token buckets: a client over its
//! rate gets 429 with a retry hint, others are not affected.
//!
//! The client is the peer address, or, when the peer is a configured
//! trusted proxy, the nearest untrusted address of its `X-Forwarded-For`
//! (anyone else's header is ignored: it would let a client pick its own
//! bucket). Buckets of clients that went quiet are pruned in the
//! background, so the limiter's memory follows the active clients, not
//! every address ever seen.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::error::ApiError;

/// Per-client token buckets.
pub type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

/// The limiter and whose forwarding headers it believes.
pub struct ClientRates {
    limiter: ClientLimiter,
    trusted_proxies: Vec<IpNet>,
}

impl ClientRates {
    /// A limiter allowing `per_second` with bursts of `burst`; `None` when
    /// the rate is 0 (limiting off).
    pub fn new(per_second: u32, burst: u32, trusted_proxies: Vec<IpNet>) -> Option<Arc<Self>> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(per_second);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            trusted_proxies,
        }))
    }

    /// The client a request counts against.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        // Walk back from the proxy: the first address it does not vouch
        // for is the client.
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.is_trusted(*a))
            .unwrap_or(peer)
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&addr))
    }

    /// Forgets the buckets of clients whose bucket is full again (they are
    /// indistinguishable from new clients).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        metrics::gauge!("bsm_rate_limiter_clients").set(self.limiter.len() as f64);
    }

    /// Prunes every `interval` until the returned task is aborted.
    pub fn prune_every(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let rates = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                match rates.upgrade() {
                    Some(rates) => rates.prune(),
                    None => return,
                }
            }
        })
    }
}

/// Parses the trusted proxies: addresses (`10.0.0.7`) or networks (`10.0.0.0/8`).
pub fn parse_proxies(list: &[String]) -> anyhow::Result<Vec<IpNet>> {
    list.iter()
        .map(|p| {
            let p = p.trim();
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| anyhow::anyhow!("trusted proxy {p:?} is not an IP address or network"))
        })
        .collect()
}

/// Answers 429 with a retry hint once a client exceeds its rate.
pub async fn rate_limit(
    State(rates): State<Arc<ClientRates>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = rates.client(peer.ip(), request.headers());
    if let Err(not_until) = rates.limiter.check_key(&client) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn only_a_trusted_proxys_forwarded_address_is_believed() {
        let proxies = parse_proxies(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let rates = ClientRates::new(1, 1, proxies).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            rates.client(ip("127.0.0.1"), &headers("203.0.113.9, 10.1.2.3")),
            ip("203.0.113.9"),
            "the nearest address the proxies do not vouch for"
        );
        assert_eq!(
            rates.client(ip("192.0.2.1"), &headers("203.0.113.9")),
            ip("192.0.2.1"),
            "an untrusted peer cannot choose its bucket"
        );
        assert_eq!(
            rates.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        assert!(parse_proxies(&["not-an-ip".into()]).is_err());
    }
}
