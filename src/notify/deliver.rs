//! Delivery: one queue and one task per receiver, so a receiver that hangs delays only its own
//! messages and never a sync; each queue is bounded and rate-limited, each message retried with
//! backoff when the receiver fails or is unreachable.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::client::{HttpClient, SendError};
use super::payload::Request;

/// What became of a notification or commit status.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Delivery {
    sent,
    /// Refused, or out of attempts.
    failed,
    /// Not attempted: the receiver's queue was full or its rate exceeded.
    dropped,
}

/// What was delivered (labels are fixed words: providers, events, forges, states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    Notification {
        provider: &'static str,
        event: &'static str,
    },
    CommitStatus {
        forge: &'static str,
        state: &'static str,
    },
}

impl std::fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryKind::Notification { provider, event } => {
                write!(f, "{provider} notification ({event})")
            }
            DeliveryKind::CommitStatus { forge, state } => {
                write!(f, "{forge} commit status ({state})")
            }
        }
    }
}

/// Where deliveries are counted (the metrics).
pub trait Recorder: Send + Sync {
    fn delivery(&self, kind: DeliveryKind, result: Delivery);
    fn retry(&self, kind: DeliveryKind);
}

/// Messages waiting per receiver; past that, new ones are dropped (and counted).
const QUEUE: usize = 32;
/// A receiver's task ends after this long without messages.
const IDLE: Duration = Duration::from_secs(600);

/// How hard to try.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Attempts per message (the first included).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Messages a receiver may get at once; then one per `refill`.
    pub burst: u32,
    pub refill: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            burst: 20,
            refill: Duration::from_secs(3),
        }
    }
}

/// One message for one receiver.
#[derive(Debug)]
pub struct Job {
    /// `namespace/name` of the GitSync, for logs.
    pub sync: String,
    /// `scheme://host` of the receiver, for logs (never its path or credentials).
    pub endpoint: String,
    pub kind: DeliveryKind,
    pub request: Request,
}

pub struct Deliverer {
    client: HttpClient,
    metrics: Arc<dyn Recorder>,
    policy: Policy,
    queues: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Deliverer {
    pub fn new(client: HttpClient, metrics: Arc<dyn Recorder>, policy: Policy) -> Deliverer {
        Deliverer {
            client,
            metrics,
            policy,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `job` for the receiver `queue` and returns at once.
    pub fn send(self: &Arc<Self>, queue: &str, job: Job) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let job = match queues.get(queue) {
            None => job,
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(job)) => {
                    warn!(sync = %job.sync, receiver = %job.endpoint, "notification dropped: {QUEUE} messages already wait for this receiver");
                    self.metrics.delivery(job.kind, Delivery::dropped);
                    return;
                }
                // Its task ended (idle): start another.
                Err(mpsc::error::TrySendError::Closed(job)) => job,
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(job);
        queues.insert(queue.to_string(), tx);
        tokio::spawn(Arc::clone(self).serve(rx));
    }

    /// A receiver's task: its messages in order, at its rate.
    async fn serve(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        let mut bucket = Bucket::new(self.policy.burst, self.policy.refill);
        loop {
            let job = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) | Err(_) => return,
            };
            if !bucket.take(Instant::now()) {
                warn!(sync = %job.sync, receiver = %job.endpoint, "notification dropped: more than {} messages to this receiver at once", self.policy.burst);
                self.metrics.delivery(job.kind, Delivery::dropped);
                continue;
            }
            let result = self.attempt(&job).await;
            self.metrics.delivery(job.kind, result);
        }
    }

    /// Sends `job` until it is delivered, refused for good, or out of attempts.
    async fn attempt(&self, job: &Job) -> Delivery {
        let mut wait = self.policy.backoff;
        for attempt in 1..=self.policy.attempts {
            let problem = match self.client.send(&job.request).await {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    debug!(sync = %job.sync, receiver = %job.endpoint, attempt, "delivered");
                    return Delivery::sent;
                }
                Ok(answer) => {
                    let retry = answer.status >= 500 || matches!(answer.status, 408 | 429);
                    if let Some(after) = answer.retry_after {
                        wait = Duration::from_secs(after.min(60));
                    }
                    let text = format!("HTTP {}: {}", answer.status, answer.body);
                    if !retry {
                        warn!(sync = %job.sync, receiver = %job.endpoint, "{} refused: {text}", job.kind);
                        return Delivery::failed;
                    }
                    text
                }
                Err(e @ SendError::Build(_)) => {
                    warn!(sync = %job.sync, receiver = %job.endpoint, "{} not sent: {e}", job.kind);
                    return Delivery::failed;
                }
                Err(e) => e.to_string(),
            };
            if attempt == self.policy.attempts {
                warn!(sync = %job.sync, receiver = %job.endpoint, attempts = attempt, "{} not delivered: {problem}", job.kind);
                break;
            }
            debug!(sync = %job.sync, receiver = %job.endpoint, attempt, "{} failed, retrying in {wait:?}: {problem}", job.kind);
            self.metrics.retry(job.kind);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.policy.max_backoff);
        }
        Delivery::failed
    }
}

/// A token bucket: `burst` at once, then one per `refill`.
struct Bucket {
    tokens: f64,
    burst: f64,
    refill: Duration,
    last: Instant,
}

impl Bucket {
    fn new(burst: u32, refill: Duration) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            refill,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.last).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_a_burst_then_one_per_refill() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            burst: 3.0,
            refill: Duration::from_secs(2),
            last: start,
        };
        let taken = (0..5).filter(|_| b.take(start)).count();
        assert_eq!(taken, 3);
        assert!(!b.take(start + Duration::from_secs(1)));
        assert!(b.take(start + Duration::from_secs(2)));
        assert!(!b.take(start + Duration::from_secs(2)));
        // Idle for long: back to the burst, not more.
        let later = start + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }
}
