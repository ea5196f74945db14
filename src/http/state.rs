//! What the HTTP handlers share.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::Client;

use crate::metrics::Metrics;

/// What `/readyz` reports: ready once the GitSync API answered and leadership is known, and
/// unready again while shutting down.
#[derive(Debug, Default)]
pub struct Readiness {
    pub api_reachable: AtomicBool,
    pub leadership_known: AtomicBool,
    pub leader: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.api_reachable.load(Ordering::Relaxed)
            && self.leadership_known.load(Ordering::Relaxed)
            && !self.shutting_down.load(Ordering::Relaxed)
    }
}

/// A token bucket: `capacity` requests at once, refilled at `per_second`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, per_second: f64) -> Bucket {
        Bucket {
            tokens: capacity,
            capacity,
            per_second,
            at: Instant::now(),
        }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The listener's state: clients, metrics, readiness, and the webhooks' rate limits.
pub struct HttpState {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Only GitSyncs of this namespace are shown and accept webhooks (None: all).
    pub namespace: Option<String>,
    pub webhooks: Mutex<Bucket>,
    /// Last trigger per GitSync: pushes within a second are coalesced into one sync.
    pub triggered: Mutex<HashMap<String, Instant>>,
}

impl HttpState {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        namespace: Option<String>,
    ) -> HttpState {
        HttpState {
            client,
            metrics,
            readiness,
            namespace,
            webhooks: Mutex::new(Bucket::new(20.0, 5.0)),
            triggered: Mutex::new(HashMap::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refuses_a_burst_beyond_its_capacity() {
        let mut bucket = Bucket::new(3.0, 0.001);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }
}
