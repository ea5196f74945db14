//! Sharding across replicas (`--shards N`): GitSyncs are split into N shards (a stable hash of
//! `namespace/name`, or the `kubesync.dev/shard` label), and each shard has a Lease
//! `<lease-name>-shard-<i>`. A replica syncs the GitSyncs of the shards whose Lease it holds.
//!
//! Every replica also holds a member Lease `<lease-name>-member-<identity>`; the live members
//! decide each replica's fair share, ⌈N / live⌉. A replica under its share takes free or expired
//! shard Leases; a replica over it (a new replica joined) stops starting syncs on its highest
//! shard, waits for the ones running to finish, then releases the Lease for another to take. A
//! SIGKILLed replica's shards expire after one lease duration and are taken then.
//!
//! Never twice at once: a replica that cannot renew a shard Lease within the renew deadline, or
//! finds it taken, exits at once, before the lease duration after which another may take it.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::crd::GitSync;
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::shard::{SHARD_LABEL, fair_share, invalid_pin, shard_of};

/// `--shards`: how many, and the Leases' name prefix, namespace, identity and timing.
#[derive(Clone, Debug)]
pub struct Sharding {
    pub count: u32,
    pub lease: LeaseConfig,
}

/// Which shards this replica holds, and the syncs running in each.
pub struct Shards {
    /// None: not sharded, every GitSync is this replica's.
    count: Option<u32>,
    state: Mutex<ShardState>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct ShardState {
    owned: BTreeSet<u32>,
    /// Held, but being handed over: no new sync starts; released once none runs.
    draining: BTreeSet<u32>,
    running: HashMap<u32, usize>,
    /// Identities of the replicas whose member Lease is live (this one included).
    live: BTreeSet<String>,
    /// `namespace/name=label` of GitSyncs already warned about an invalid shard label (once
    /// each, not at every reconcile).
    warned: BTreeSet<String>,
}

/// A sync of a GitSync whose shard this replica holds; the shard is not handed over while any
/// turn of it is alive.
pub struct Turn<'a> {
    shards: &'a Shards,
    shard: Option<u32>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(shard) = self.shard {
            let mut state = self.shards.state();
            if let Some(n) = state.running.get_mut(&shard) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Shards {
    /// Not sharded.
    pub fn none() -> Shards {
        Shards::with_count(None)
    }

    pub fn new(count: u32) -> Shards {
        Shards::with_count(Some(count.max(1)))
    }

    fn with_count(count: Option<u32>) -> Shards {
        Shards {
            count,
            state: Mutex::new(ShardState::default()),
            changed: watch::channel(0).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn shard_of(&self, sync: &GitSync) -> Option<u32> {
        let count = self.count?;
        let pinned = sync.labels().get(SHARD_LABEL).map(String::as_str);
        let (namespace, name) = (sync.namespace().unwrap_or_default(), sync.name_any());
        if invalid_pin(pinned, count) {
            let seen = format!("{namespace}/{name}={}", pinned.unwrap_or_default());
            if self.state().warned.insert(seen) {
                warn!(sync = %format!("{namespace}/{name}"), label = SHARD_LABEL, ?pinned,
                    "the shard label names no shard below --shards; the GitSync's hash decides");
            }
        }
        Some(shard_of(&namespace, &name, pinned, count))
    }

    /// A turn to sync `sync`, if its shard is this replica's (and not being handed over).
    pub fn begin(&self, sync: &GitSync) -> Option<Turn<'_>> {
        let Some(shard) = self.shard_of(sync) else {
            return Some(Turn {
                shards: self,
                shard: None,
            });
        };
        let mut state = self.state();
        if !state.owned.contains(&shard) {
            return None;
        }
        *state.running.entry(shard).or_default() += 1;
        Some(Turn {
            shards: self,
            shard: Some(shard),
        })
    }

    /// Ticks each time this replica takes a shard, for its GitSyncs to be reconciled.
    pub fn taken(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let rx = self.changed.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// Whether `identity` is a live replica (sharded only; unsharded, no other replica syncs).
    pub fn alive(&self, identity: &str) -> bool {
        self.count.is_some() && self.state().live.contains(identity)
    }

    fn held(&self) -> BTreeSet<u32> {
        let state = self.state();
        state.owned.union(&state.draining).copied().collect()
    }

    fn acquired(&self, shard: u32) {
        self.state().owned.insert(shard);
        self.changed.send_modify(|n| *n += 1);
    }

    fn drain(&self, shard: u32) {
        let mut state = self.state();
        state.owned.remove(&shard);
        state.draining.insert(shard);
    }

    fn drained(&self) -> Vec<u32> {
        let state = self.state();
        let idle = |s: &&u32| state.running.get(*s).copied().unwrap_or(0) == 0;
        state.draining.iter().filter(idle).copied().collect()
    }

    fn released(&self, shard: u32) {
        self.state().draining.remove(&shard);
    }
}

/// Keeps this replica's member Lease and shard Leases.
pub struct ShardManager {
    shards: Arc<Shards>,
    metrics: Arc<Metrics>,
    api: Api<Lease>,
    base: LeaseConfig,
    member: Elector,
    electors: Vec<Elector>,
    /// Member Leases by name: their last record and when this replica saw it change.
    members: HashMap<String, (String, Instant)>,
}

/// The member Lease name of an identity: a DNS label of it.
fn member_name(prefix: &str, identity: &str) -> String {
    let clean: String = (identity.to_lowercase().chars())
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                true => c,
                false => '-',
            },
        )
        .collect();
    format!("{prefix}-member-{}", clean.trim_matches(['-', '.']))
}

impl ShardManager {
    /// `lease` names the Leases (`<name>-shard-<i>`, `<name>-member-<identity>`) and times them.
    pub fn new(
        client: &Client,
        lease: &LeaseConfig,
        shards: Arc<Shards>,
        metrics: Arc<Metrics>,
    ) -> ShardManager {
        let count = shards.count.unwrap_or(1);
        let named = |name: String| {
            let config = LeaseConfig {
                name,
                ..lease.clone()
            };
            Elector::new(client.clone(), config)
        };
        ShardManager {
            api: Api::namespaced(client.clone(), &lease.namespace),
            member: named(member_name(&lease.name, &lease.identity)),
            electors: (0..count)
                .map(|i| named(format!("{}-shard-{i}", lease.name)))
                .collect(),
            members: HashMap::new(),
            base: lease.clone(),
            shards,
            metrics,
        }
    }

    /// Keeps the Leases until `done` (the controller finished its in-flight syncs); then hands
    /// itself back for [`ShardManager::release_all`].
    pub async fn keep(mut self, done: watch::Receiver<bool>) -> ShardManager {
        loop {
            self.round().await;
            tokio::time::sleep(self.base.retry_period).await;
            if *done.borrow() {
                return self;
            }
        }
    }

    async fn round(&mut self) {
        if let Err(e) = self.member.try_acquire_or_renew().await {
            warn!(error = %e, "renewing this replica's member lease");
        }
        let live = self.live_members().await;
        let count = u32::try_from(self.electors.len()).unwrap_or(1);
        let share = fair_share(count, live) as usize;
        self.renew_held().await;
        let held = self.shards.held();
        if held.len() > share
            && let Some(&last) = held.iter().rev().find(|s| !self.is_draining(**s))
        {
            info!(
                shard = last,
                live, share, "handing a shard over to a replica that joined"
            );
            self.shards.drain(last);
        }
        for shard in self.shards.drained() {
            self.release(shard).await;
        }
        self.take(share).await;
    }

    fn is_draining(&self, shard: u32) -> bool {
        self.shards.state().draining.contains(&shard)
    }

    /// Renews every held shard; exits the process when one is lost or overdue, before another
    /// replica may take it.
    async fn renew_held(&mut self) {
        for shard in self.shards.held() {
            let Some(elector) = self.electors.get_mut(shard as usize) else {
                continue;
            };
            match elector.try_acquire_or_renew().await {
                Ok(true) => {}
                Ok(false) => {
                    error!(shard, "shard lease taken by another replica; exiting");
                    std::process::exit(1);
                }
                Err(e) => warn!(shard, error = %e, "renewing a shard lease"),
            }
            if elector.renewal_overdue() {
                error!(shard, "could not renew a shard lease in time; exiting");
                std::process::exit(1);
            }
        }
    }

    /// Takes free or expired shards up to `share`, starting at a place of this replica's own (so
    /// replicas do not all race for shard 0). Shards not taken are still observed, so that their
    /// expiry counts from when their holder stopped renewing.
    async fn take(&mut self, share: usize) {
        let count = self.electors.len();
        let start = shard_of("", &self.base.identity, None, count as u32) as usize;
        for shard in (0..count).map(|i| (start + i) % count) {
            let shard_u32 = shard as u32;
            if self.shards.held().contains(&shard_u32) {
                continue;
            }
            let wanted = self.shards.held().len() < share;
            let elector = &mut self.electors[shard];
            let result = match wanted {
                true => elector.try_acquire_or_renew().await,
                false => elector.observe().await.map(|_| false),
            };
            match result {
                Ok(true) => {
                    info!(shard = shard_u32, "took a shard");
                    self.metrics.set_shard_owned(shard_u32, true);
                    self.shards.acquired(shard_u32);
                }
                Ok(false) => {}
                Err(e) => warn!(shard = shard_u32, error = %e, "taking a shard lease"),
            }
        }
    }

    async fn release(&mut self, shard: u32) {
        if let Some(elector) = self.electors.get_mut(shard as usize)
            && let Err(e) = elector.release().await
        {
            warn!(shard, error = %e, "releasing a shard lease");
        }
        info!(shard, "shard released");
        self.metrics.set_shard_owned(shard, false);
        self.shards.released(shard);
    }

    /// Live members (this replica included): member Leases whose record changed within a lease
    /// duration, by this replica's clock. Member Leases dead for ten durations are deleted.
    async fn live_members(&mut self) -> u32 {
        let prefix = format!("{}-member-", self.base.name);
        let own = member_name(&self.base.name, &self.base.identity);
        let leases = match self.api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                warn!(error = %e, "listing member leases");
                return u32::try_from(self.members.len().max(1)).unwrap_or(1);
            }
        };
        let now = Instant::now();
        let duration = self.base.lease_duration;
        let mut live = 1;
        let mut identities = BTreeSet::from([self.base.identity.clone()]);
        for lease in leases.iter().filter(|l| l.name_any().starts_with(&prefix)) {
            let name = lease.name_any();
            let spec = lease.spec.clone().unwrap_or_default();
            let record = format!(
                "{:?}/{:?}",
                spec.holder_identity,
                spec.renew_time.map(|t| t.0)
            );
            let seen = self
                .members
                .entry(name.clone())
                .or_insert((record.clone(), now));
            if seen.0 != record {
                *seen = (record, now);
            }
            let quiet = seen.1.elapsed();
            let held = spec.holder_identity.as_ref().is_some_and(|h| !h.is_empty());
            if name != own && held && quiet < duration {
                live += 1;
                identities.extend(spec.holder_identity);
            }
            if name != own && quiet >= duration * 10 {
                self.forget_member(&name).await;
            }
        }
        self.shards.state().live = identities;
        live
    }

    async fn forget_member(&mut self, name: &str) {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(
                lease = name,
                "deleted the member lease of a replica gone for long"
            ),
            Err(e) => warn!(lease = name, error = %e, "deleting a stale member lease"),
        }
        self.members.remove(name);
    }

    /// After the controller stopped: releases every shard and the member Lease, so that the
    /// other replicas take over at once.
    pub async fn release_all(mut self) {
        for shard in self.shards.held() {
            self.release(shard).await;
        }
        let own = member_name(&self.base.name, &self.base.identity);
        if let Err(e) = self.api.delete(&own, &DeleteParams::default()).await {
            warn!(error = %e, "deleting this replica's member lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lease_names_are_dns_labels_of_the_identity() {
        assert_eq!(
            member_name("kubesync", "kubesync-7d9f-abcde"),
            "kubesync-member-kubesync-7d9f-abcde"
        );
        assert_eq!(
            member_name("kubesync", "Host_1:42"),
            "kubesync-member-host-1-42"
        );
    }

    #[test]
    fn a_turn_is_given_only_on_an_owned_shard_and_holds_it_while_alive() {
        let shards = Shards::new(2);
        let sync: GitSync = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubesync.dev/v1alpha1", "kind": "GitSync",
            "metadata": {"name": "web", "namespace": "apps", "labels": {SHARD_LABEL: "1"}},
            "spec": {"url": "file:///repo"}
        }))
        .expect("GitSync");
        assert_eq!(shards.shard_of(&sync), Some(1));
        assert!(shards.begin(&sync).is_none(), "not owned yet");
        shards.acquired(1);
        let turn = shards.begin(&sync).expect("owned");
        shards.drain(1);
        assert!(shards.begin(&sync).is_none(), "no new turn while draining");
        assert!(shards.drained().is_empty(), "a sync still runs");
        drop(turn);
        assert_eq!(shards.drained(), vec![1]);
        let unsharded = Shards::none();
        assert!(unsharded.begin(&sync).is_some());
        assert_eq!(unsharded.shard_of(&sync), None);
    }
}
