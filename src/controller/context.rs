//! What every reconcile shares: the clients, the settings, the metrics, and the little this
//! process remembers per GitSync between reconciles.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::watches::Watches;
use crate::crd::GitSync;
use crate::metrics::Metrics;
use crate::plan::ObjectKey;
use crate::sync::Step;

/// Settings of the controller process.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch GitSyncs in this namespace only (None: all namespaces).
    pub namespace: Option<String>,
    pub cache_dir: PathBuf,
    /// known_hosts used when a GitSync's Secret has no `known_hosts` key.
    pub known_hosts: Option<PathBuf>,
    pub field_manager: String,
    /// GitSyncs synced at the same time.
    pub concurrency: u16,
    /// Name of this replica (Events, Lease).
    pub identity: String,
    /// While watches see no drift and the revision does not move, one interval in this many
    /// runs a full sync (lists and applies everything); the others only fetch.
    pub full_sync_every: u32,
    /// The `kustomize` executable (None: beside kubesync, then PATH).
    pub kustomize_binary: Option<PathBuf>,
    /// The `helm` executable (None: beside kubesync, then PATH).
    pub helm_binary: Option<PathBuf>,
    /// What GitSyncs outside the trusted namespaces may reach.
    pub tenancy: super::tenancy::Tenancy,
    /// Default receivers, reminder period, status page link.
    pub notify: super::notifier::NotifyConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("writing status of GitSync {sync}: {}", crate::kube_ext::kube_message(.source))]
    Status {
        sync: String,
        #[source]
        source: kube::Error,
    },
    /// The sync ran and failed; its status, Event and metrics are written. The backoff before
    /// the next attempt is `error_policy`'s.
    #[error("sync of GitSync {sync} failed at {step}: {message}")]
    SyncFailed {
        sync: String,
        step: Step,
        message: String,
    },
}

/// What a finished sync wrote into the status fields that decide whether the next one is due.
#[derive(Clone, Debug)]
pub struct Finished {
    pub time: Timestamp,
    pub generation: Option<i64>,
    pub requested_at: Option<String>,
}

/// Objects whose health is read again until they are healthy or the next sync runs.
#[derive(Clone)]
pub struct Recheck {
    pub client: Client,
    pub objects: Vec<(ObjectKey, kube::discovery::ApiResource)>,
    /// The count last written to status and metrics.
    pub reported: usize,
    pub next: Instant,
}

/// Per-GitSync memory of this process, by `namespace/name`.
#[derive(Default)]
struct Memory {
    /// Consecutive failures, for backoff.
    failures: HashMap<String, u32>,
    /// The last sync this process finished, for when the watch has not yet delivered the status
    /// it wrote (a stale status must not start the same sync twice).
    finished: HashMap<String, Finished>,
    /// GitSyncs this process has started a sync for.
    started: HashSet<String>,
    /// Objects the last sync left unhealthy, read again between syncs.
    rechecks: HashMap<String, Recheck>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// The controller's own client configuration, from which impersonating clients are built.
    pub kube_config: kube::Config,
    pub metrics: Arc<Metrics>,
    pub config: ControllerConfig,
    memory: Mutex<Memory>,
    impersonating: Mutex<HashMap<String, Client>>,
    /// Client configurations of remote clusters' kubeconfigs, by Secret and content hash.
    remote_configs: Mutex<HashMap<String, kube::Config>>,
    pub stop: watch::Receiver<bool>,
    /// The shards this replica holds (all GitSyncs when not sharded).
    pub shards: Arc<super::shards::Shards>,
    /// What each GitSync's watches saw since its last sync.
    pub watches: Watches,
    /// GitSyncs whose watches saw drift, for the controller to reconcile (taken once by `run`).
    drifted: Mutex<Option<DriftedReceiver>>,
    /// What was told about each GitSync, and the queues to the receivers.
    pub notifier: super::notifier::Notifier,
}

pub type DriftedReceiver =
    futures::channel::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<GitSync>>;

/// `namespace/name` of a GitSync: the key of every per-GitSync map and metric series.
pub fn key_of(sync: &GitSync) -> String {
    format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

impl Context {
    pub fn new(
        client: Client,
        kube_config: kube::Config,
        metrics: Arc<Metrics>,
        config: ControllerConfig,
        stop: watch::Receiver<bool>,
    ) -> Context {
        let (trigger, drifted) = futures::channel::mpsc::unbounded();
        Context {
            client,
            kube_config,
            notifier: super::notifier::Notifier::new(metrics.clone()),
            metrics,
            config,
            memory: Mutex::new(Memory::default()),
            impersonating: Mutex::new(HashMap::new()),
            remote_configs: Mutex::new(HashMap::new()),
            stop,
            shards: Arc::new(super::shards::Shards::none()),
            watches: Watches::new(trigger),
            drifted: Mutex::new(Some(drifted)),
        }
    }

    /// The GitSyncs whose watches see drift, as a stream of reconcile requests (once).
    pub fn take_drifted(&self) -> Option<DriftedReceiver> {
        self.drifted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cached client for `user`, or the one `build` makes.
    pub fn client_for(
        &self,
        user: &str,
        build: impl FnOnce() -> Result<Client, kube::Error>,
    ) -> Result<Client, kube::Error> {
        let mut cache = self.impersonating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(user) {
            return Ok(c.clone());
        }
        let client = build()?;
        cache.insert(user.into(), client.clone());
        Ok(client)
    }

    pub fn cached_config(&self, key: &str) -> Option<kube::Config> {
        let cache = self
            .remote_configs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.get(key).cloned()
    }

    pub fn cache_config(&self, key: &str, config: &kube::Config) {
        let mut cache = self
            .remote_configs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.insert(key.into(), config.clone());
    }

    pub fn failure_count(&self, key: &str) -> u32 {
        self.memory().failures.get(key).copied().unwrap_or(0)
    }

    pub fn set_failures(&self, key: &str, count: u32) {
        let mut memory = self.memory();
        match count {
            0 => memory.failures.remove(key),
            n => memory.failures.insert(key.into(), n),
        };
    }

    pub fn finished(&self, key: &str) -> Option<Finished> {
        self.memory().finished.get(key).cloned()
    }

    pub fn set_finished(&self, key: &str, finished: Finished) {
        self.memory().finished.insert(key.into(), finished);
    }

    /// Notes that this process starts a sync of `key`; true the first time.
    pub fn first_start(&self, key: &str) -> bool {
        self.memory().started.insert(key.into())
    }

    pub fn recheck(&self, key: &str) -> Option<Recheck> {
        self.memory().rechecks.get(key).cloned()
    }

    pub fn set_recheck(&self, key: &str, recheck: Option<Recheck>) {
        let mut memory = self.memory();
        match recheck {
            Some(r) => memory.rechecks.insert(key.into(), r),
            None => memory.rechecks.remove(key),
        };
    }

    /// GitSyncs this process holds any state for.
    pub fn known_keys(&self) -> BTreeSet<String> {
        let memory = self.memory();
        let mut keys: BTreeSet<String> = memory.started.iter().cloned().collect();
        keys.extend(memory.finished.keys().cloned());
        keys.extend(memory.failures.keys().cloned());
        keys.extend(memory.rechecks.keys().cloned());
        keys
    }

    /// Whether this process holds any state for `key` (without listing every key).
    pub fn knows(&self, key: &str) -> bool {
        let memory = self.memory();
        memory.started.contains(key)
            || memory.finished.contains_key(key)
            || memory.failures.contains_key(key)
            || memory.rechecks.contains_key(key)
    }

    /// Drops everything kept for a deleted GitSync: its entries here and its metric series.
    pub fn forget(&self, key: &str) {
        {
            let mut memory = self.memory();
            memory.started.remove(key);
            memory.finished.remove(key);
            memory.failures.remove(key);
            memory.rechecks.remove(key);
        }
        self.watches.forget(key);
        self.notifier.forget(key);
        self.metrics.forget(key);
    }
}

/// How often objects a sync left unhealthy are read again between syncs.
pub const HEALTH_RECHECK: Duration = Duration::from_secs(10);
