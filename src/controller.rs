//! The in-cluster controller: each GitSync is synced by the same engine as `kubesync sync`, with
//! the GitSync itself as ApplySet parent. Status, Events and metrics report every sync.
//!
//! A reconcile decides first whether a sync is due (spec changed, `kubesync.dev/requestedAt`
//! changed, interval elapsed, or a failure's backoff elapsed); otherwise it only requeues. So the
//! watch events that our own status writes cause never start a sync.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::applyset::Parent;
use crate::crd::{GitSync, GitSyncStatus, REQUESTED_AT_ANNOTATION, SyncHistoryEntry, SyncSummary};
use crate::metrics::Metrics;
use crate::source::{Auth, SourceSpec};
use crate::sync::{Clients, ObjectResult, SyncOptions, SyncReport};

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
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// The controller's own client configuration, from which impersonating clients are built.
    pub kube_config: kube::Config,
    pub metrics: Arc<Metrics>,
    pub config: ControllerConfig,
    /// Per GitSync (`namespace/name`): consecutive failures, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per GitSync: the last sync this process finished, for when the watch has not yet
    /// delivered the status it wrote (a stale status must not start the same sync twice).
    finished: Mutex<HashMap<String, Finished>>,
    /// GitSyncs this process has started a sync for.
    started: Mutex<std::collections::HashSet<String>>,
    impersonating: Mutex<HashMap<String, Client>>,
    /// Per GitSync: objects the last sync left unhealthy, read again between syncs.
    unhealthy: Mutex<HashMap<String, Recheck>>,
    stop: watch::Receiver<bool>,
}

/// Objects whose health is read again until they are healthy or the next sync runs.
#[derive(Clone)]
struct Recheck {
    client: Client,
    objects: Vec<(crate::plan::ObjectKey, kube::discovery::ApiResource)>,
    /// The count last written to status and metrics.
    reported: usize,
    next: std::time::Instant,
}

/// How often objects a sync left unhealthy are read again between syncs.
const HEALTH_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("writing status of GitSync {sync}: {}", crate::kube_ext::kube_message(.source))]
    Status {
        sync: String,
        #[source]
        source: kube::Error,
    },
}

/// What a finished sync wrote into the status fields that decide whether the next one is due.
#[derive(Clone, Debug)]
struct Finished {
    time: Timestamp,
    generation: Option<i64>,
    requested_at: Option<String>,
}

/// Condition reasons (kstatus).
mod reason {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "SyncFailed";
    pub const PROGRESSING: &str = "Progressing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SUSPENDED: &str = "Suspended";
    pub const INTERRUPTED: &str = "Interrupted";
}

impl Context {
    pub fn new(
        client: Client,
        kube_config: kube::Config,
        metrics: Arc<Metrics>,
        config: ControllerConfig,
        stop: watch::Receiver<bool>,
    ) -> Context {
        Context {
            client,
            kube_config,
            metrics,
            config,
            failures: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashMap::new()),
            started: Mutex::new(Default::default()),
            impersonating: Mutex::new(HashMap::new()),
            unhealthy: Mutex::new(HashMap::new()),
            stop,
        }
    }

    /// A client that acts as `system:serviceaccount:<namespace>:<name>`.
    fn impersonating(&self, namespace: &str, service_account: &str) -> Result<Client, String> {
        let user = format!("system:serviceaccount:{namespace}:{service_account}");
        let mut cache = self.impersonating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&user) {
            return Ok(c.clone());
        }
        let mut config = self.kube_config.clone();
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ]);
        let client =
            Client::try_from(config).map_err(|e| format!("building a client for {user}: {e}"))?;
        cache.insert(user, client.clone());
        Ok(client)
    }

    fn failure_count(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn finished(&self, key: &str) -> Option<Finished> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Notes that this process starts a sync of `key`; true the first time.
    fn first_start(&self, key: &str) -> bool {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into())
    }

    fn set_finished(&self, key: &str, finished: Finished) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into(), finished);
    }

    /// GitSyncs this process holds any state for.
    fn known_keys(&self) -> std::collections::BTreeSet<String> {
        let mut keys: std::collections::BTreeSet<String> = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        keys.extend(
            self.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        keys.extend(
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        keys.extend(self.rechecks().keys().cloned());
        keys
    }

    fn rechecks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Recheck>> {
        self.unhealthy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops everything kept for a deleted GitSync: its entries here and its metric series.
    fn forget(&self, key: &str) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.set_failures(key, 0);
        self.rechecks().remove(key);
        self.metrics.forget(key);
    }

    fn set_failures(&self, key: &str, count: u32) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if count == 0 {
            failures.remove(key);
        } else {
            failures.insert(key.into(), count);
        }
    }
}

/// Runs the controller until `shutdown` resolves; in-flight syncs stop at a stage boundary before
/// apply, or finish through prune.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<GitSync> = match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let config = kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency);
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let sweeper = tokio::spawn(forget_deleted(ctx.clone(), controller.store()));
    controller
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        // Boxed: the engine's future is Send, but rustc cannot prove it through the generic
        // bounds of `run` without help.
        .run(
            |sync, ctx| -> futures::future::BoxFuture<'static, Result<Action, ControllerError>> {
                Box::pin(async move {
                    let action = reconcile(sync, ctx).await;
                    // What the sync allocated is dropped now: give it back to the system.
                    crate::memory::release_free_memory();
                    action
                })
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ObjectNotFound(_) => {}
                    other => warn!(error = %other, "controller"),
                }
            }
        })
        .await;
    sweeper.abort();
}

/// How often state and metric series of deleted GitSyncs are dropped.
const FORGET_PERIOD: Duration = Duration::from_secs(5);

/// Drops, every few seconds, what this process keeps for GitSyncs that no longer exist (the
/// reconciler never hears of a deletion): per-GitSync maps and metric series. Reads only the
/// controller's own cache of GitSyncs: no request.
async fn forget_deleted(ctx: Arc<Context>, store: kube::runtime::reflector::Store<GitSync>) {
    // No wait for the cache's first list: this process knows a GitSync only after reconciling it,
    // which the cache delivered, and a relist swaps the cache's content at once (never empty
    // in between).
    loop {
        tokio::time::sleep(FORGET_PERIOD).await;
        for key in ctx.known_keys() {
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            let object = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
            if store.get(&object).is_none() {
                info!(sync = %key, "GitSync deleted: forgetting its state and metric series");
                ctx.forget(&key);
            }
        }
    }
}

fn error_policy(sync: Arc<GitSync>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    warn!(%error, "reconcile failed");
    // Within one interval, so that a GitSync converges within two once the API is back.
    let interval = sync.spec.interval().unwrap_or(Duration::from_secs(5));
    Action::requeue(interval.clamp(Duration::from_secs(1), Duration::from_secs(5)))
}

fn key_of(sync: &GitSync) -> String {
    format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

/// ±10 % jitter around `interval`, different for each GitSync and each sync, and the same for
/// the same GitSync and last sync time: every requeue of one wait agrees on it (the scheduler
/// keeps the earliest of several requeues, so an unjittered one would undo the jitter).
fn jittered(interval: Duration, key: &str, last_sync: Timestamp) -> Duration {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same input gives the same wait in every call.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    last_sync.as_second().hash(&mut hasher);
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    interval.mul_f64(1.0 + 0.1 * unit)
}

/// Backoff after `failures` consecutive failures: 5 s doubling, never beyond the interval.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let exp = Duration::from_secs(5).saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    exp.min(interval).max(Duration::from_secs(1))
}

/// Why a sync runs now, or how long until it is due.
#[derive(Debug, PartialEq)]
enum Due {
    Now(&'static str),
    In(Duration),
}

/// The status as this process knows it: what the watch delivered, or, when this process has
/// since finished a sync the watch has not shown yet, that sync's fields.
fn known_status(status: &GitSyncStatus, finished: Option<&Finished>) -> GitSyncStatus {
    let mut status = status.clone();
    if let Some(f) = finished
        && status.last_sync_time.as_ref().is_none_or(|t| t.0 < f.time)
    {
        status.last_sync_time = Some(Time(f.time));
        status.observed_generation = f.generation;
        status.last_handled_requested_at = f.requested_at.clone();
    }
    status
}

/// Whether the status shows a sync that started and never finished: `Reconciling` left at
/// Progressing by a process that stopped (SIGKILL, lost lease) before writing the result.
fn interrupted_sync(status: &GitSyncStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True" && c.reason == reason::PROGRESSING)
}

fn due(sync: &GitSync, interval: Duration, failures: u32, now: Timestamp) -> Due {
    let status = sync.status.clone().unwrap_or_default();
    if status.observed_generation != sync.metadata.generation {
        return Due::Now("spec changed");
    }
    let requested = sync.annotations().get(REQUESTED_AT_ANNOTATION);
    if requested.is_some() && requested != status.last_handled_requested_at.as_ref() {
        return Due::Now("requested");
    }
    let Some(last) = status.last_sync_time else {
        return Due::Now("never synced");
    };
    let wait = if failures > 0 {
        backoff(failures, interval)
    } else {
        jittered(interval, &key_of(sync), last.0)
    };
    let elapsed = now
        .duration_since(last.0)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if elapsed >= wait {
        Due::Now(if failures > 0 { "retry" } else { "interval" })
    } else {
        Due::In(wait - elapsed)
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Keeps a condition's lastTransitionTime when its status did not change.
fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
                && prev.status == c.status
            {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            c
        })
        .collect()
}

async fn patch_status(
    ctx: &Context,
    sync: &GitSync,
    status: serde_json::Value,
) -> Result<(), ControllerError> {
    let api: Api<GitSync> =
        Api::namespaced(ctx.client.clone(), &sync.namespace().unwrap_or_default());
    api.patch_status(
        &sync.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|source| ControllerError::Status {
        sync: key_of(sync),
        source,
    })?;
    Ok(())
}

/// One `events.k8s.io/v1` Event per call. (kube-runtime's Recorder folds events of the same
/// reason into one series and keeps the first note, which would hide each sync's revision.)
async fn publish(ctx: &Context, sync: &GitSync, type_: EventType, reason: &str, note: String) {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    let namespace = sync.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let event = K8sEvent {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{}.{:x}", sync.name_any(), now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        action: Some("Sync".into()),
        reason: Some(reason.into()),
        note: Some(note.chars().take(1024).collect()),
        type_: Some(match type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now,
        )),
        reporting_controller: Some("kubesync.dev/controller".into()),
        reporting_instance: Some(ctx.config.identity.clone()),
        regarding: Some(sync.object_ref(&())),
        ..Default::default()
    };
    let events: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(e) = events
        .create(&kube::api::PostParams::default(), &event)
        .await
    {
        warn!(sync = %key_of(sync), error = %crate::kube_ext::kube_message(&e), "publishing an event");
    }
}

async fn reconcile(sync: Arc<GitSync>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let key = key_of(&sync);
    let generation = sync.metadata.generation;
    let old_status = sync.status.clone().unwrap_or_default();
    ctx.metrics.set_suspended(&key, sync.spec.suspend);

    if let Err(e) = sync.spec.validate() {
        let message = e.to_string();
        if old_status.observed_generation != generation
            || old_status.last_error.as_deref() != Some(&message)
        {
            publish(
                &ctx,
                &sync,
                EventType::Warning,
                reason::INVALID_SPEC,
                message.clone(),
            )
            .await;
        }
        let conditions = merge_conditions(
            &old_status.conditions,
            vec![
                condition("Ready", false, reason::INVALID_SPEC, &message, generation),
                condition("Reconciling", false, reason::INVALID_SPEC, "", generation),
                condition("Stalled", true, reason::INVALID_SPEC, &message, generation),
            ],
        );
        patch_status(
            &ctx,
            &sync,
            json!({"observedGeneration": generation, "conditions": conditions, "lastError": message}),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let (Ok(interval), Ok(timeout)) = (sync.spec.interval(), sync.spec.timeout()) else {
        return Ok(Action::await_change());
    };
    if sync.spec.suspend {
        if old_status.observed_generation != generation {
            let mut conditions: Vec<Condition> = old_status
                .conditions
                .iter()
                .filter(|c| c.type_ == "Ready")
                .cloned()
                .collect();
            conditions.push(condition(
                "Reconciling",
                false,
                reason::SUSPENDED,
                "suspended",
                generation,
            ));
            conditions.push(condition(
                "Stalled",
                false,
                reason::SUSPENDED,
                "",
                generation,
            ));
            let conditions = merge_conditions(&old_status.conditions, conditions);
            patch_status(
                &ctx,
                &sync,
                json!({"observedGeneration": generation, "conditions": conditions}),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    let failures = ctx.failure_count(&key);
    let finished_here = ctx.finished(&key);
    let mut view = (*sync).clone();
    view.status = Some(known_status(&old_status, finished_here.as_ref()));
    let why = match due(&view, interval, failures, Timestamp::now()) {
        Due::In(wait) => {
            let recheck = recheck_health(&ctx, &sync, &key).await?;
            return Ok(Action::requeue(recheck.map_or(wait, |r| r.min(wait))));
        }
        Due::Now(why) => why,
    };
    if *ctx.stop.borrow() {
        return Ok(Action::await_change());
    }
    info!(sync = %key, why, "sync due");
    let mut old_status = old_status;
    if ctx.first_start(&key)
        && let Some(left) = interrupted_sync(&old_status)
    {
        // Nothing of that sync's result was recorded; say so before syncing again. (The
        // engine records group-kinds in the parent before applying, so nothing is orphaned.)
        let note = format!(
            "the previous sync did not finish ({}, started {}): its controller stopped or lost \
             the lease; syncing again",
            left.message, left.last_transition_time.0
        );
        warn!(sync = %key, "{note}");
        ctx.metrics.record_interrupted(&key);
        old_status.history.insert(
            0,
            SyncHistoryEntry {
                revision: None,
                result: reason::INTERRUPTED.into(),
                duration_seconds: 0.0,
                time: left.last_transition_time.clone(),
            },
        );
        publish(&ctx, &sync, EventType::Warning, reason::INTERRUPTED, note).await;
    }
    // Reconciling while the sync runs.
    let mut progressing = old_status.conditions.clone();
    progressing.retain(|c| c.type_ != "Reconciling");
    progressing.push(condition(
        "Reconciling",
        true,
        reason::PROGRESSING,
        &format!("syncing ({why}) on {}", ctx.config.identity),
        generation,
    ));
    patch_status(
        &ctx,
        &sync,
        json!({"conditions": merge_conditions(&old_status.conditions, progressing)}),
    )
    .await?;

    let report = run_sync(&ctx, &sync, timeout).await;
    let managed = report.summary.managed as i64;
    let first_apply = report.succeeded()
        && report.revision.is_some()
        && report.revision != old_status.last_applied_revision;
    ctx.metrics.record_sync(&key, &report, managed, first_apply);

    // Whole seconds, as the status stores it: the next interval's jitter is seeded by it, and
    // this process and the watch must agree on it.
    let finished_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
    let status = status_after(
        &sync,
        &old_status,
        &report,
        managed,
        generation,
        finished_at,
    );
    patch_status(&ctx, &sync, status).await?;
    ctx.set_finished(
        &key,
        Finished {
            time: finished_at,
            generation,
            requested_at: sync.annotations().get(REQUESTED_AT_ANNOTATION).cloned(),
        },
    );

    let changed = report.summary.created
        + report.summary.configured
        + report.summary.recreated
        + report.summary.adopted
        + report.summary.pruned;
    let revision = report
        .revision
        .as_deref()
        .map(short)
        .unwrap_or("unknown")
        .to_string();
    if !report.succeeded() {
        let first = report.errors.first().cloned().unwrap_or_default();
        publish(
            &ctx,
            &sync,
            EventType::Warning,
            reason::FAILED,
            format!("revision {revision}: {first}"),
        )
        .await;
    } else if changed > 0 {
        let s = &report.summary;
        publish(
            &ctx,
            &sync,
            EventType::Normal,
            "Synced",
            format!(
                "revision {revision}: {} created, {} configured, {} pruned, {} unchanged",
                s.created, s.configured, s.pruned, s.unchanged
            ),
        )
        .await;
    }
    let recheck = remember_unhealthy(&ctx, &sync, &key, &report).then_some(HEALTH_RECHECK);
    if report.succeeded() {
        ctx.set_failures(&key, 0);
        // The same wait `due` computes when the status write comes back through the watch.
        let wait = jittered(interval, &key, finished_at);
        Ok(Action::requeue(recheck.map_or(wait, |r| r.min(wait))))
    } else {
        let failures = failures.saturating_add(1);
        ctx.set_failures(&key, failures);
        Ok(Action::requeue(backoff(failures, interval)))
    }
}

use crate::crd::short_revision as short;

fn status_after(
    sync: &GitSync,
    old: &GitSyncStatus,
    report: &SyncReport,
    managed: i64,
    generation: Option<i64>,
    finished_at: Timestamp,
) -> serde_json::Value {
    let ok = report.succeeded();
    let first_error = report.errors.first().cloned().or_else(|| {
        report.objects.iter().find_map(|o| match &o.result {
            ObjectResult::Failed(r) => Some(format!("{}: {r}", o.object)),
            _ => None,
        })
    });
    let last_error = first_error.map(|e| {
        let mut e: String = e.chars().take(1024).collect();
        if e.len() >= 1024 {
            e.push('…');
        }
        e
    });
    let stalled = matches!(report.failure, Some("manifests" | "plan"));
    let ready_message = if ok {
        format!(
            "applied revision {}",
            report.revision.as_deref().map(short).unwrap_or("?")
        )
    } else {
        last_error.clone().unwrap_or_default()
    };
    let conditions = merge_conditions(
        &old.conditions,
        vec![
            condition(
                "Ready",
                ok,
                if ok {
                    reason::SUCCEEDED
                } else {
                    reason::FAILED
                },
                &ready_message,
                generation,
            ),
            condition(
                "Reconciling",
                false,
                if ok {
                    reason::SUCCEEDED
                } else {
                    reason::FAILED
                },
                "",
                generation,
            ),
            condition(
                "Stalled",
                stalled,
                if stalled {
                    reason::FAILED
                } else {
                    reason::SUCCEEDED
                },
                if stalled { &ready_message } else { "" },
                generation,
            ),
        ],
    );
    let now = Time(finished_at);
    let mut history = vec![SyncHistoryEntry {
        revision: report.revision.clone(),
        result: if ok { "Succeeded" } else { "Failed" }.into(),
        duration_seconds: (report.duration_seconds * 1000.0).round() / 1000.0,
        time: now.clone(),
    }];
    history.extend(old.history.iter().take(4).cloned());
    let s = &report.summary;
    let summary = SyncSummary {
        managed: if ok {
            managed
        } else {
            old.summary.as_ref().map(|s| s.managed).unwrap_or(managed)
        },
        applied: (s.created + s.configured) as i64,
        pruned: s.pruned as i64,
        failed: s.failed as i64,
        drift_corrected: s.drift_corrected as i64,
        unhealthy: s.unhealthy as i64,
    };
    let last_applied = if ok {
        report.revision.clone()
    } else {
        old.last_applied_revision.clone()
    };
    json!({
        "observedGeneration": generation,
        "conditions": conditions,
        "lastAppliedRevision": last_applied,
        "lastAttemptedRevision": report.revision.clone().or(old.last_attempted_revision.clone()),
        "shortRevision": last_applied.as_deref().map(short),
        "lastSyncTime": now,
        "lastHandledRequestedAt": sync.annotations().get(REQUESTED_AT_ANNOTATION),
        "summary": summary,
        "history": history,
        "lastError": last_error,
    })
}

/// Fetches credentials, builds the clients and runs the engine.
async fn run_sync(ctx: &Context, sync: &GitSync, timeout: Duration) -> SyncReport {
    let namespace = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let fail = |category: &'static str, message: String| SyncReport {
        name: name.clone(),
        errors: vec![message],
        failure: Some(category),
        prune_blocked: Some(crate::sync::PruneBlocked::Failure),
        ..Default::default()
    };
    let work_dir = ctx.config.cache_dir.join(&namespace).join(&name);
    let auth = match credentials(ctx, sync, &work_dir).await {
        Ok(a) => a,
        Err(message) => return fail("credentials", message),
    };
    let reference = match sync.spec.git_ref() {
        Ok(r) => r,
        Err(e) => return fail("spec", e.to_string()),
    };
    let spec = SourceSpec {
        url: sync.spec.url.clone(),
        reference,
        auth,
        timeout,
    };
    let apply_client = match apply_client(ctx, sync) {
        Ok(c) => c,
        Err(message) => return fail("credentials", message),
    };
    let clients = Clients {
        apply: apply_client,
        parent: ctx.client.clone(),
    };
    let mut options = SyncOptions::new(
        &name,
        sync.spec.target_namespace.as_deref().unwrap_or(&namespace),
    );
    options.paths = vec![sync.spec.path.clone()];
    options.field_manager = ctx.config.field_manager.clone();
    options.prune = sync.spec.prune;
    options.wait = sync.spec.wait.then_some(timeout);
    options.request_timeout = timeout.min(Duration::from_secs(60));
    options.parent = Some(Parent::git_sync(&name, &namespace));
    options.stop = Some(ctx.stop.clone());
    crate::sync::sync_source_with(&clients, &spec, &work_dir.join("git"), &options).await
}

/// The client a GitSync's objects are applied (and read) with: its ServiceAccount's, if it names
/// one.
fn apply_client(ctx: &Context, sync: &GitSync) -> Result<Client, String> {
    match &sync.spec.service_account_name {
        Some(sa) => ctx.impersonating(&sync.namespace().unwrap_or_default(), sa),
        None => Ok(ctx.client.clone()),
    }
}

/// After a sync: remembers the objects it left unhealthy (not failed for good: those need a new
/// commit), so their health is read again between syncs. Returns whether there are any.
fn remember_unhealthy(ctx: &Context, sync: &GitSync, key: &str, report: &SyncReport) -> bool {
    let objects: Vec<_> = report
        .objects
        .iter()
        .filter(|o| o.health.as_ref().is_some_and(|h| !h.is_healthy()))
        .filter_map(|o| o.target.clone())
        .collect();
    let client = apply_client(ctx, sync).ok();
    match client.filter(|_| !objects.is_empty()) {
        Some(client) => {
            ctx.rechecks().insert(
                key.into(),
                Recheck {
                    client,
                    objects,
                    reported: report.summary.unhealthy,
                    next: std::time::Instant::now() + HEALTH_RECHECK,
                },
            );
            true
        }
        None => {
            ctx.rechecks().remove(key);
            false
        }
    }
}

/// Between syncs: reads the health of the objects the last sync left unhealthy (only those) and
/// updates the gauge and the status's unhealthy count when it changed. Returns how long until the
/// next read, while any object is still unhealthy.
async fn recheck_health(
    ctx: &Context,
    sync: &GitSync,
    key: &str,
) -> Result<Option<Duration>, ControllerError> {
    let Some(recheck) = ctx.rechecks().get(key).cloned() else {
        return Ok(None);
    };
    let now = std::time::Instant::now();
    if recheck.next > now {
        return Ok(Some(recheck.next - now));
    }
    let mut still = Vec::new();
    for (object, resource) in recheck.objects {
        let health = crate::sync::read_health(&recheck.client, &object, &resource).await;
        if health.is_none_or(|h| !h.is_healthy()) {
            still.push((object, resource));
        }
    }
    let count = still.len();
    if count != recheck.reported {
        info!(sync = %key, unhealthy = count, "health re-read between syncs");
        ctx.metrics.set_unhealthy(key, count);
        patch_status(ctx, sync, json!({"summary": {"unhealthy": count}})).await?;
    }
    if still.is_empty() {
        ctx.rechecks().remove(key);
        return Ok(None);
    }
    ctx.rechecks().insert(
        key.into(),
        Recheck {
            objects: still,
            reported: count,
            next: std::time::Instant::now() + HEALTH_RECHECK,
            ..recheck
        },
    );
    Ok(Some(HEALTH_RECHECK))
}

/// Reads the GitSync's Secret and writes the SSH key and known_hosts it holds to private files
/// (libgit2 takes them as paths). Values never reach a message.
async fn credentials(
    ctx: &Context,
    sync: &GitSync,
    work_dir: &std::path::Path,
) -> Result<Auth, String> {
    let mut auth = Auth {
        known_hosts: ctx.config.known_hosts.clone(),
        ..Default::default()
    };
    let Some(secret_ref) = &sync.spec.secret_ref else {
        return Ok(auth);
    };
    let namespace = sync.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            format!(
                "reading Secret {namespace}/{}: {}",
                secret_ref.name,
                crate::kube_ext::kube_message(&e)
            )
        })?
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} (spec.secretRef) does not exist",
                secret_ref.name
            )
        })?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone()).map_err(|_| {
                    format!(
                        "Secret {namespace}/{}: key {key} is not UTF-8",
                        secret_ref.name
                    )
                })
            })
            .transpose()
    };
    let dir = work_dir.join("credentials");
    let write_private = |file: &str, content: &str| -> Result<PathBuf, String> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cache directory {}: {e}", dir.display()))?;
        let path = dir.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let mut content = content.to_string();
        if !content.ends_with('\n') {
            content.push('\n');
        }
        f.write_all(content.as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    };
    if let Some(identity) = text("identity")? {
        auth.ssh_key = Some(write_private("identity", &identity)?);
    }
    if let Some(known_hosts) = text("known_hosts")? {
        auth.known_hosts = Some(write_private("known_hosts", &known_hosts)?);
    }
    auth.ssh_passphrase = text("passphrase")?;
    auth.username = text("username")?;
    auth.password = text("password")?.map(|p| p.trim_end_matches(['\r', '\n']).to_string());
    Ok(auth)
}

/// Everything the `kubesync controller` process needs besides the engine's settings.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub http_addr: std::net::SocketAddr,
    /// Leader election. None: this replica always syncs.
    pub lease: Option<crate::lease::LeaseConfig>,
}

/// The controller process: HTTP listener, leader election, the reconcile loop, and a clean exit on
/// SIGTERM or SIGINT (in-flight syncs stop at a stage boundary, the Lease is released).
pub async fn run_process(
    client: Client,
    kube_config: kube::Config,
    config: ControllerConfig,
    process: ProcessConfig,
) -> anyhow::Result<()> {
    use crate::http::{HttpState, Readiness};
    use std::sync::atomic::Ordering;

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down: finishing or stopping in-flight syncs");
            readiness.shutting_down.store(true, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_state = Arc::new(HttpState::new(
        client.clone(),
        metrics.clone(),
        readiness.clone(),
        config.namespace.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(process.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", process.http_addr))?;
    info!(addr = %process.http_addr, "HTTP listener: /metrics /healthz /readyz /hooks/<namespace>/<name> and the status page /");
    let http = tokio::spawn({
        let shutdown = stopped(stop_rx.clone());
        crate::http::serve(listener, http_state, shutdown)
    });

    // The GitSync API must answer (the CRD installed, RBAC in place) before anything else.
    let api: Api<GitSync> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    loop {
        if *stop_rx.borrow() {
            return Ok(());
        }
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(e) => {
                warn!(error = %crate::kube_ext::kube_message(&e), "cannot list GitSyncs (is the CRD installed?); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    readiness.api_reachable.store(true, Ordering::Relaxed);

    let mut elector = process
        .lease
        .clone()
        .map(|lease| crate::lease::Elector::new(client.clone(), lease));
    if let Some(elector) = elector.as_mut() {
        let retry = elector.config().retry_period;
        loop {
            if *stop_rx.borrow() {
                return Ok(());
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            readiness.leadership_known.store(true, Ordering::Relaxed);
            tokio::time::sleep(retry).await;
        }
        info!(identity = %config.identity, lease = %elector.config().name, "became the leader");
    }
    readiness.leader.store(true, Ordering::Relaxed);
    readiness.leadership_known.store(true, Ordering::Relaxed);

    // The leader renews; if it cannot within the renew deadline, it stops at once, before any
    // other replica may take over (the lease duration is longer than the deadline).
    // It keeps renewing until the controller has finished its in-flight syncs.
    let (done_tx, done_rx) = watch::channel(false);
    let renewer = elector.map(|mut elector| {
        tokio::spawn(async move {
            let retry = elector.config().retry_period;
            loop {
                tokio::time::sleep(retry).await;
                if *done_rx.borrow() {
                    return elector;
                }
                match elector.try_acquire_or_renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!("leadership lost to another replica; exiting");
                        std::process::exit(1);
                    }
                    Err(e) => warn!(error = %e, "renewing the lease"),
                }
                if elector.renewal_overdue() {
                    tracing::error!("could not renew the lease in time; exiting");
                    std::process::exit(1);
                }
            }
        })
    });

    let ctx = Arc::new(Context::new(
        client,
        kube_config,
        metrics,
        config,
        stop_rx.clone(),
    ));
    run(ctx, stopped(stop_rx.clone())).await;
    info!("controller stopped");
    let _ = done_tx.send(true);
    if let Some(renewer) = renewer
        && let Ok(mut elector) = renewer.await
    {
        match elector.release().await {
            Ok(()) => info!("lease released"),
            Err(e) => warn!(error = %e, "releasing the lease"),
        }
    }
    let _ = http.await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_with(
        status: Option<GitSyncStatus>,
        generation: i64,
        annotation: Option<&str>,
    ) -> GitSync {
        let mut s = GitSync::new(
            "web",
            serde_json::from_value(json!({"url": "https://example.org/r.git"})).expect("spec"),
        );
        s.metadata.namespace = Some("apps".into());
        s.metadata.generation = Some(generation);
        if let Some(a) = annotation {
            s.metadata.annotations =
                Some([(REQUESTED_AT_ANNOTATION.to_string(), a.to_string())].into());
        }
        s.status = status;
        s
    }

    fn synced(at: Timestamp, requested: Option<&str>) -> GitSyncStatus {
        GitSyncStatus {
            observed_generation: Some(1),
            last_sync_time: Some(Time(at)),
            last_handled_requested_at: requested.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_status_the_watch_has_not_delivered_yet_does_not_start_the_same_sync_again() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let t1 = t0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60))
            .expect("t");
        let minute = Duration::from_secs(60);
        // The watch still shows the status before the request was handled at t1.
        let stale = sync_with(Some(synced(t0, None)), 2, Some("a"));
        assert_eq!(due(&stale, minute, 0, t1), Due::Now("spec changed"));
        let finished = Finished {
            time: t1,
            generation: Some(2),
            requested_at: Some("a".into()),
        };
        let mut view = stale.clone();
        view.status = Some(known_status(
            stale.status.as_ref().expect("status"),
            Some(&finished),
        ));
        assert_eq!(
            due(&view, minute, 0, t1),
            Due::In(jittered(minute, "apps/web", t1))
        );
        // Once the watch shows a newer status, that one counts.
        let t2 = t1
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
            .expect("t");
        let newer = synced(t2, Some("a"));
        assert_eq!(
            known_status(&newer, Some(&finished)).last_sync_time,
            Some(Time(t2))
        );
    }

    #[test]
    fn a_reconciling_condition_left_at_progressing_is_an_interrupted_sync() {
        let mut status = synced(Timestamp::now(), None);
        assert!(interrupted_sync(&status).is_none());
        status.conditions = vec![condition(
            "Reconciling",
            true,
            reason::PROGRESSING,
            "syncing (interval) on one",
            Some(1),
        )];
        assert_eq!(
            interrupted_sync(&status).map(|c| c.message.as_str()),
            Some("syncing (interval) on one")
        );
        status.conditions = vec![condition(
            "Reconciling",
            false,
            reason::SUCCEEDED,
            "",
            Some(1),
        )];
        assert!(interrupted_sync(&status).is_none());
    }

    #[test]
    fn a_sync_is_due_on_spec_change_request_interval_and_retry() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let minute = Duration::from_secs(60);
        let after = |s: i64| {
            t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .expect("t")
        };
        assert_eq!(
            due(&sync_with(None, 1, None), minute, 0, t0),
            Due::Now("spec changed")
        );
        assert_eq!(
            due(&sync_with(Some(synced(t0, None)), 2, None), minute, 0, t0),
            Due::Now("spec changed")
        );
        let period = jittered(minute, "apps/web", t0);
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                0,
                after(20)
            ),
            Due::In(period - Duration::from_secs(20))
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                0,
                after(67)
            ),
            Due::Now("interval"),
            "due within the interval plus 10 %"
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, Some("a")),
                minute,
                0,
                after(1)
            ),
            Due::Now("requested")
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, Some("a"))), 1, Some("a")),
                minute,
                0,
                after(1)
            ),
            Due::In(period - Duration::from_secs(1))
        );
        // After 2 failures the backoff (10 s) decides, not the interval.
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                2,
                after(10)
            ),
            Due::Now("retry")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(60);
        let steps: Vec<u64> = (1..=6).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let mut waits = std::collections::BTreeSet::new();
        for i in 0..200 {
            let d = jittered(Duration::from_secs(100), &format!("s{i}"), t0);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
            assert_eq!(d, jittered(Duration::from_secs(100), &format!("s{i}"), t0));
            waits.insert(d.as_millis());
        }
        assert!(waits.len() > 150, "waits spread: {} distinct", waits.len());
        let below = waits.iter().filter(|&&w| w < 100_000).count();
        assert!(
            below > 50 && below < 150,
            "about half the waits are shorter than the interval: {below}"
        );
    }

    #[test]
    fn the_wait_after_a_sync_is_the_same_from_every_requeue() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let minute = Duration::from_secs(60);
        let sync = sync_with(Some(synced(t0, None)), 1, None);
        let expected = jittered(minute, &key_of(&sync), t0);
        assert_ne!(expected, minute, "jittered");
        assert_eq!(due(&sync, minute, 0, t0), Due::In(expected));
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let old = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Succeeded".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(1_700_000_000).expect("t")),
        }];
        let same = merge_conditions(
            &old,
            vec![condition("Ready", true, "Succeeded", "x", Some(1))],
        );
        assert_eq!(same[0].last_transition_time, old[0].last_transition_time);
        let flipped = merge_conditions(
            &old,
            vec![condition("Ready", false, "SyncFailed", "x", Some(1))],
        );
        assert_ne!(flipped[0].last_transition_time, old[0].last_transition_time);
    }
}
