//! What this process remembers to tell: the notification settings, the open problem per
//! GitSync (deduplication) and the commit status last posted, and the delivery queues.
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::Metrics;
use crate::notify::EventKind;
use crate::notify::client::HttpClient;
use crate::notify::dedup::{Decision, Dedup, Outcome};
use crate::notify::deliver::{Deliverer, DeliveryKind, Job, Policy};
use crate::notify::forge::{self, State};
use crate::notify::payload::Provider;
use crate::notify::payload::endpoint;

/// The controller's notification settings.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    /// Receivers of GitSyncs that name none (`--notify`), their Secrets in `namespace`.
    pub defaults: Vec<DefaultReceiver>,
    /// Where the defaults' Secrets are: the controller's namespace.
    pub namespace: String,
    /// A problem that lasts is told again after this long (zero: never).
    pub reminder: Duration,
    /// Where people reach the status page (links in messages and commit statuses).
    pub status_page_url: Option<String>,
}

/// A receiver every GitSync without `spec.notify` has: `provider=slack,secret=name,events=a+b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultReceiver {
    pub provider: Provider,
    pub secret: String,
    pub events: Vec<EventKind>,
}

impl std::str::FromStr for DefaultReceiver {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (mut provider, mut secret, mut events) = (None, None, EventKind::DEFAULT.to_vec());
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match key {
                "provider" => provider = Some(Provider::parse(value).ok_or_else(|| {
                    format!(
                        "unknown provider {value:?} (generic, slack, discord, matrix, ntfy, gotify)"
                    )
                })?),
                "secret" => secret = Some(value.to_string()),
                "events" => {
                    events = (value.split('+'))
                        .map(|e| EventKind::parse(e).ok_or_else(|| format!("unknown event {e:?}")))
                        .collect::<Result<_, _>>()?
                }
                other => return Err(format!("unknown key {other:?} (provider, secret, events)")),
            }
        }
        Ok(DefaultReceiver {
            provider: provider.ok_or("provider= is missing")?,
            secret: secret.ok_or("secret= is missing")?,
            events,
        })
    }
}

/// What this process remembers to tell: the open problem per GitSync, the last commit status.
pub struct Notifier {
    /// Made at the first message: a controller that tells nobody loads no CA certificates.
    deliverer: OnceLock<Option<Arc<Deliverer>>>,
    metrics: Arc<Metrics>,
    dedup: Mutex<HashMap<String, Dedup>>,
    /// (revision, state) last posted per GitSync.
    pub(super) statuses: Arc<Mutex<HashMap<String, (String, State)>>>,
    pub(super) sequence: AtomicU64,
    /// The commit-status poster of the sync running, for its result.
    posters: Mutex<HashMap<String, Arc<StatusPoster>>>,
}

impl Notifier {
    pub fn new(metrics: Arc<Metrics>) -> Notifier {
        Notifier {
            deliverer: OnceLock::new(),
            metrics,
            dedup: Mutex::new(HashMap::new()),
            statuses: Arc::new(Mutex::new(HashMap::new())),
            sequence: AtomicU64::new(0),
            posters: Mutex::new(HashMap::new()),
        }
    }

    /// The delivery queues; None when no HTTPS client can be made (no CA certificates).
    pub(super) fn deliverer(&self) -> Option<Arc<Deliverer>> {
        let made = self
            .deliverer
            .get_or_init(|| match HttpClient::new(Duration::from_secs(10)) {
                Ok(client) => {
                    let metrics = self.metrics.clone();
                    Some(Arc::new(Deliverer::new(client, metrics, Policy::default())))
                }
                Err(e) => {
                    warn!("notifications and commit statuses are off: {e}");
                    None
                }
            });
        made.clone()
    }

    pub(super) fn decide(&self, key: &str, outcome: Outcome, reminder: Duration) -> Decision {
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        (dedup.entry(key.into()).or_default()).decide(outcome, Instant::now(), reminder)
    }

    /// The problem last told about, while it lasts.
    pub(super) fn open_event(&self, key: &str) -> Option<EventKind> {
        let dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        dedup.get(key).and_then(Dedup::open_event)
    }

    /// Keeps the poster a sync was given, for the sync's result.
    pub(super) fn keep_poster(&self, key: &str, poster: Arc<StatusPoster>) {
        let mut posters = self.posters.lock().unwrap_or_else(|p| p.into_inner());
        posters.insert(key.into(), poster);
    }

    pub(super) fn take_poster(&self, key: &str) -> Option<Arc<StatusPoster>> {
        let mut posters = self.posters.lock().unwrap_or_else(|p| p.into_inner());
        posters.remove(key)
    }

    /// Forgets a deleted GitSync.
    pub fn forget(&self, key: &str) {
        (self.dedup.lock().unwrap_or_else(|p| p.into_inner())).remove(key);
        (self.statuses.lock().unwrap_or_else(|p| p.into_inner())).remove(key);
        (self.posters.lock().unwrap_or_else(|p| p.into_inner())).remove(key);
    }
}

/// What posts a GitSync's commit statuses: its forge, repository and token, read before the
/// sync so that the revision found by the fetch can be marked pending without waiting.
pub struct StatusPoster {
    pub(super) deliverer: Arc<Deliverer>,
    pub(super) statuses: Arc<Mutex<HashMap<String, (String, State)>>>,
    pub(super) repo: forge::Repository,
    pub(super) token: String,
    pub(super) context: String,
    pub(super) link: Option<String>,
    pub(super) key: String,
}

impl StatusPoster {
    /// Queues `state` for `revision` unless it is what was posted last.
    pub fn post(&self, revision: &str, state: State, description: &str) {
        if revision.starts_with("sha256:")
            || !status_is_new(&self.statuses, &self.key, revision, state)
        {
            return;
        }
        let request = forge::status_request(
            &self.repo,
            &self.token,
            revision,
            state,
            &self.context,
            description,
            self.link.as_deref(),
        );
        let kind = DeliveryKind::CommitStatus {
            forge: self.repo.forge.as_str(),
            state: state.as_str(),
        };
        let job = Job {
            sync: self.key.clone(),
            endpoint: endpoint(&self.repo.api),
            kind,
            request,
        };
        // One queue per GitSync: several GitSyncs of one repository each post two statuses per
        // commit, and must not eat one another's rate.
        let queue = format!(
            "forge\u{0}{}\u{0}{}\u{0}{}",
            self.repo.api, self.repo.path, self.key
        );
        self.deliverer.send(&queue, job);
    }
}

/// Whether `state` on `revision` is news (and notes it as posted).
fn status_is_new(
    statuses: &Mutex<HashMap<String, (String, State)>>,
    key: &str,
    revision: &str,
    state: State,
) -> bool {
    let mut statuses = statuses.lock().unwrap_or_else(|p| p.into_inner());
    let last = statuses.get(key);
    let new = match state {
        // A commit is pending once: not again when a failed one is retried.
        State::Pending => last.is_none_or(|(r, _)| r != revision),
        _ => last != Some(&(revision.to_string(), state)),
    };
    if new {
        statuses.insert(key.into(), (revision.into(), state));
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_receivers_parse_from_the_flag() {
        let d: DefaultReceiver = "provider=discord,secret=chat,events=failed+recovered"
            .parse()
            .unwrap();
        assert_eq!(d.provider, Provider::Discord);
        assert_eq!(d.secret, "chat");
        assert_eq!(d.events, vec![EventKind::Failed, EventKind::Recovered]);
        let d: DefaultReceiver = "provider=ntfy, secret=push".parse().unwrap();
        assert_eq!(d.events, EventKind::DEFAULT.to_vec());
        assert!(
            "secret=x"
                .parse::<DefaultReceiver>()
                .unwrap_err()
                .contains("provider")
        );
        assert!(
            "provider=irc,secret=x"
                .parse::<DefaultReceiver>()
                .unwrap_err()
                .contains("irc")
        );
        assert!(
            "provider=slack,secret=x,events=boom"
                .parse::<DefaultReceiver>()
                .is_err()
        );
    }
}
