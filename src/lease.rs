//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it: a candidate
//! takes the Lease when it is free, released, or has not been renewed for `lease_duration` as
//! observed by the candidate's own clock (so clocks need not agree). Updates carry the Lease's
//! resourceVersion, so two candidates can never both win one round.
//!
//! The leader renews every `renew_every`; if it cannot renew within `renew_deadline` (shorter than
//! the lease duration) it must stop syncing before anyone else may take over.
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(name: &str, namespace: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The record last seen and when this candidate first saw it (its own clock).
    observed: Option<(String, Instant)>,
    /// When this candidate last renewed as leader.
    pub last_renewed: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
#[error("lease {namespace}/{name}: {}", crate::kube_ext::kube_message(.source))]
pub struct LeaseError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_renewed: None,
        }
    }

    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15)
    }

    /// The outcome of a write: held, lost the race (409), or failed.
    fn written<T>(&mut self, result: Result<T, kube::Error>) -> Result<bool, LeaseError> {
        match result {
            Ok(_) => {
                self.last_renewed = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// One round: acquire or renew. Ok(true) when this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let found = self.api.get_opt(&self.config.name).await;
        let Some(lease) = found.map_err(|e| self.err(e))? else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(self.config.identity.as_str());
        if !held_by_me && holder.is_some() && !self.expired(&spec) {
            return Ok(false);
        }
        let mut updated = lease.clone();
        let transitions = spec.lease_transitions.unwrap_or(0);
        updated.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if held_by_me {
                spec.acquire_time
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if held_by_me {
                transitions
            } else {
                transitions + 1
            }),
            ..spec
        });
        // The resourceVersion in `updated` makes this a compare-and-swap.
        let replaced = (self.api)
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await;
        self.written(replaced)
    }

    /// Reads the Lease and notes its record, so that its expiry is measured from when it stopped
    /// changing even before this candidate wants it. True when it is free, released or expired.
    pub async fn observe(&mut self) -> Result<bool, LeaseError> {
        let found = self.api.get_opt(&self.config.name).await;
        let Some(lease) = found.map_err(|e| self.err(e))? else {
            return Ok(true);
        };
        let spec = lease.spec.unwrap_or_default();
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        Ok(self.expired(&spec) || free)
    }

    /// Creates the Lease, held by this candidate.
    async fn create(&mut self) -> Result<bool, LeaseError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let created = self.api.create(&PostParams::default(), &lease).await;
        self.written(created)
    }

    /// Whether the holder's record has not changed for a whole lease duration, by this
    /// candidate's own clock (clocks of different machines are never compared).
    fn expired(&mut self, spec: &LeaseSpec) -> bool {
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.holder_identity,
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_transitions
        );
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(15)))
            .unwrap_or(self.config.lease_duration);
        seen_at.elapsed() >= duration
    }

    /// Gives the Lease up so another candidate can take it at once.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.err(e))?;
        self.last_renewed = None;
        Ok(())
    }

    /// Whether a leader that last renewed at `last_renewed` must consider itself deposed.
    pub fn renewal_overdue(&self) -> bool {
        self.last_renewed
            .is_none_or(|at| at.elapsed() >= self.config.renew_deadline)
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }
}
