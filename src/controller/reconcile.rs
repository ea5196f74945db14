//! The reconcile loop: for each GitSync, decide whether a sync is due; if so, mark it
//! progressing, run the engine, and write status, Events and metrics. Between syncs, only the
//! objects a sync left unhealthy are read again.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::context::{Context, ControllerError, Finished, HEALTH_RECHECK, Recheck, key_of};
use super::credentials::{CredentialsError, clients};
use super::dependencies;
use super::engine::{parent_of, run_sync, source_spec, sync_options, with_secrets, work_dir};
use super::events::publish;
use super::notifications;
use super::rollback;
use super::schedule::{CRD_RECHECK, Due, backoff, due, jittered, known_status};
use super::status::{
    DRIFT_LIMIT, StatusUpdate, drifted_objects, interrupted_sync, patch_status, reason, syncing_on,
};
use super::watches::Repair;
use crate::crd::{
    DriftedObject, GitSync, GitSyncStatus, REQUESTED_AT_ANNOTATION, SyncHistoryEntry,
    short_revision,
};
use crate::drift::DriftPolicy;
use crate::sync::{SyncError, SyncReport};

/// Runs the controller until `shutdown` resolves; in-flight syncs stop at a step boundary before
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
    let mut controller = Controller::new(api, watcher::Config::default().any_semantic());
    if let Some(drifted) = ctx.take_drifted() {
        controller = controller.reconcile_on(drifted);
    }
    controller = controller.reconcile_all_on(ctx.shards.taken());
    let sweeper = tokio::spawn(forget_deleted(ctx.clone(), controller.store()));
    controller
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        // Boxed: the engine's future is Send, but rustc cannot prove it through the generic
        // bounds of `run` without help.
        .run(
            |sync, ctx| -> futures::future::BoxFuture<'static, Result<Action, ControllerError>> {
                Box::pin(reconcile_if_ours(sync, ctx))
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) | Ok(_) => {}
                Err(other) => warn!(error = %other, "controller"),
            }
        })
        .await;
    sweeper.abort();
}

/// How often state and metric series of deleted GitSyncs are dropped.
const FORGET_PERIOD: Duration = Duration::from_secs(5);

/// Drops, every few seconds, what this process keeps for GitSyncs that no longer exist (the
/// reconciler never hears of a deletion): per-GitSync memory and metric series. Reads only the
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

/// A failed sync waits out its backoff (5 s doubling, at most the interval); a failed status
/// write retries within one interval, so a GitSync converges within two once the API is back.
fn error_policy(sync: Arc<GitSync>, error: &ControllerError, ctx: Arc<Context>) -> Action {
    let interval = sync.spec.interval().unwrap_or(Duration::from_secs(5));
    match error {
        ControllerError::SyncFailed { sync, .. } => {
            Action::requeue(backoff(ctx.failure_count(sync), interval))
        }
        ControllerError::Status { .. } => {
            warn!(%error, "reconcile failed");
            Action::requeue(interval.clamp(Duration::from_secs(1), Duration::from_secs(5)))
        }
    }
}

/// Reconciles a GitSync of a shard this replica holds; the others are their shard holder's, and
/// what this replica knew of them (a shard handed over) is forgotten.
async fn reconcile_if_ours(
    sync: Arc<GitSync>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let Some(turn) = ctx.shards.begin(&sync) else {
        let key = key_of(&sync);
        if ctx.knows(&key) {
            ctx.forget(&key);
        }
        return Ok(Action::await_change());
    };
    if let Some(other) = syncing_elsewhere(&ctx, &sync) {
        debug!(sync = %key_of(&sync), replica = other, "still syncing on another replica; waiting");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let result = reconcile(sync, ctx.clone()).await;
    drop(turn);
    result
}

/// A live replica that is still syncing this GitSync, which moved to one of this replica's shards
/// (its shard label changed, or `--shards` did): this replica waits for it to finish, at most
/// the sync's timeout (and half a minute) from its start.
fn syncing_elsewhere<'a>(ctx: &Context, sync: &'a GitSync) -> Option<&'a str> {
    let (identity, since) = syncing_on(sync.status.as_ref()?)?;
    if identity == ctx.config.identity || !ctx.shards.alive(identity) {
        return None;
    }
    let timeout = sync.spec.timeout().unwrap_or(Duration::from_secs(300));
    let running = Timestamp::now().duration_since(since.0);
    let running = Duration::try_from(running).unwrap_or_default();
    (running < timeout + Duration::from_secs(30)).then_some(identity)
}

async fn reconcile(sync: Arc<GitSync>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let key = key_of(&sync);
    let old_status = sync.status.clone().unwrap_or_default();
    let update = StatusUpdate {
        old: &old_status,
        generation: sync.metadata.generation,
    };
    ctx.metrics.set_suspended(&key, sync.spec.suspend);
    if let Some(message) = invalid_spec(&ctx, &sync) {
        return invalid(&ctx, &sync, &update, &message).await;
    }
    let (Ok(interval), Ok(timeout)) = (sync.spec.interval(), sync.spec.timeout()) else {
        return Ok(Action::await_change());
    };
    if sync.spec.suspend {
        ctx.watches.forget(&key);
        ctx.metrics.set_watched(&key, 0);
        if old_status.observed_generation != sync.metadata.generation {
            patch_status(&ctx, &sync, update.suspended()).await?;
        }
        return Ok(Action::await_change());
    }
    let failures = ctx.failure_count(&key);
    let why = match when_due(&ctx, &sync, interval, failures) {
        Due::In(wait) => return between_syncs(&ctx, &sync, timeout, wait).await,
        Due::Now(why) => why,
    };
    if *ctx.stop.borrow() {
        return Ok(Action::await_change());
    }
    if let Some(action) = dependencies::hold(&ctx, &sync, &update).await? {
        return Ok(action);
    }
    if let Some(finished_at) = fetch_only(&ctx, &sync, &update, timeout, why).await? {
        let wait = jittered(interval, &key, finished_at);
        return between_syncs(&ctx, &sync, timeout, wait).await;
    }
    info!(sync = %key, why, "sync due");
    let mut old_status = old_status.clone();
    if ctx.first_start(&key) {
        note_interrupted(&ctx, &sync, &mut old_status).await;
    }
    let update = StatusUpdate {
        old: &old_status,
        generation: sync.metadata.generation,
    };
    let progressing = format!("syncing ({why}) on {}", ctx.config.identity);
    patch_status(&ctx, &sync, update.progressing(&progressing)).await?;
    ctx.watches.sync_started(&key);
    let report = run_sync(&ctx, &sync, timeout, None).await;
    let finished_at = finish(&ctx, &sync, &update, &report).await?;
    let report = rollback::if_unhealthy(&ctx, &sync, &update, timeout, report).await?;
    follow_applied(&ctx, &sync, &report).await;
    let recheck = (remember_unhealthy(&ctx, &sync, &report)
        .await
        .then_some(HEALTH_RECHECK))
    .or((!report.waiting_for_crd.is_empty()).then_some(CRD_RECHECK));
    let (failure, first_problem) = (report.failure, report.first_problem());
    // What the sync allocated is dropped now: give it back to the system (only after a sync:
    // trimming costs more than an idle interval).
    drop(report);
    crate::memory::release_free_memory();
    match failure {
        None => {
            ctx.set_failures(&key, 0);
            // The same wait `due` computes when the status write comes back through the watch.
            let wait = jittered(interval, &key, finished_at);
            Ok(Action::requeue(recheck.map_or(wait, |r| r.min(wait))))
        }
        Some(step) => {
            ctx.set_failures(&key, failures.saturating_add(1));
            Err(ControllerError::SyncFailed {
                sync: key,
                step,
                message: first_problem.unwrap_or_default(),
            })
        }
    }
}

/// Why the spec cannot be synced: invalid in itself, or refused by the tenancy lockdown.
fn invalid_spec(ctx: &Context, sync: &GitSync) -> Option<String> {
    (sync.spec.validate().err().map(|e| e.to_string()))
        .or_else(|| ctx.config.tenancy.refused_reference(sync))
}

/// When the next sync is due, from the status as this process knows it. A sync another process
/// left unfinished (it was killed or lost the lease) is resumed at once, not after an interval.
fn when_due(ctx: &Context, sync: &GitSync, interval: Duration, failures: u32) -> Due {
    let key = key_of(sync);
    let finished_here = ctx.finished(&key);
    let old_status = sync.status.clone().unwrap_or_default();
    let mut view = sync.clone();
    view.status = Some(known_status(&old_status, finished_here.as_ref()));
    match due(&view, interval, failures, Timestamp::now()) {
        Due::In(_) if finished_here.is_none() && interrupted_sync(&old_status).is_some() => {
            Due::Now("interrupted")
        }
        due => due,
    }
}

/// Intervals that need only a fetch: the watches saw nothing and the revision did not move, or
/// the revision is still the one a rollback holds back. Returns when that was decided; None: a
/// full sync is due.
async fn fetch_only(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    timeout: Duration,
    why: &str,
) -> Result<Option<Timestamp>, ControllerError> {
    let key = key_of(sync);
    if why == "interval"
        && let Some(applied) = ctx.watches.quiet(&key, ctx.config.full_sync_every)
        && let Some(finished_at) = idle_interval(ctx, sync, update, timeout, &applied).await?
    {
        return Ok(Some(finished_at));
    }
    if let Some(bad) = rollback::held(sync, update.old)
        && let Some(finished_at) = idle_interval(ctx, sync, update, timeout, &bad).await?
    {
        ctx.set_failures(&key, 0);
        return Ok(Some(finished_at));
    }
    Ok(None)
}

/// Between syncs: repairs the drift the watches saw, reads the health of objects left unhealthy,
/// and waits `wait` (less while objects are unhealthy).
async fn between_syncs(
    ctx: &Context,
    sync: &GitSync,
    timeout: Duration,
    wait: Duration,
) -> Result<Action, ControllerError> {
    let key = key_of(sync);
    if let Some(repair) = ctx.watches.take_drift(&key) {
        repair_drift(ctx, sync, timeout, repair).await;
    }
    let recheck = recheck_health(ctx, sync, &key).await?;
    Ok(Action::requeue(recheck.map_or(wait, |r| r.min(wait))))
}

/// An invalid spec: stalled, with one Warning Event per new generation or message.
async fn invalid(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    message: &str,
) -> Result<Action, ControllerError> {
    let old = update.old;
    if old.observed_generation != update.generation || old.last_error.as_deref() != Some(message) {
        let note = message.to_string();
        publish(ctx, sync, EventType::Warning, reason::INVALID_SPEC, note).await;
    }
    patch_status(ctx, sync, update.invalid(message)).await?;
    Ok(Action::await_change())
}

/// The first sync of a GitSync by this process: when the status shows a sync that never
/// finished, record it as interrupted before syncing again. (The engine records group-kinds
/// in the parent before applying, so nothing was orphaned.)
async fn note_interrupted(ctx: &Context, sync: &GitSync, status: &mut GitSyncStatus) {
    let Some(left) = interrupted_sync(status) else {
        return;
    };
    let note = format!(
        "the previous sync did not finish ({}, started {}): its controller stopped or lost \
         the lease; syncing again",
        left.message, left.last_transition_time.0
    );
    let entry = SyncHistoryEntry {
        revision: None,
        result: reason::INTERRUPTED.into(),
        duration_seconds: 0.0,
        time: left.last_transition_time.clone(),
    };
    let key = key_of(sync);
    warn!(sync = %key, "{note}");
    ctx.metrics.record_interrupted(&key);
    status.history.insert(0, entry);
    publish(ctx, sync, EventType::Warning, reason::INTERRUPTED, note).await;
}

/// Records a finished sync: metrics, status, what this process remembers of it, and an Event
/// when it failed or changed something. Returns when it finished.
async fn finish(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    report: &SyncReport,
) -> Result<Timestamp, ControllerError> {
    let key = key_of(sync);
    let managed = report.summary.managed as i64;
    let first_apply = report.succeeded()
        && report.revision.is_some()
        && report.revision != update.old.last_applied_revision;
    ctx.metrics.record_sync(&key, report, managed, first_apply);
    // Whole seconds, as the status stores it: the next interval's jitter is seeded by it, and
    // this process and the watch must agree on it.
    let finished_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
    let requested_at = sync.annotations().get(REQUESTED_AT_ANNOTATION);
    let status = update.finished(report, managed, requested_at, finished_at);
    patch_status(ctx, sync, status).await?;
    let drift = update.drift_after(report);
    ctx.metrics.set_drifted(&key, drift.len());
    announce_drift(ctx, sync, &update.old.drift, &drift).await;
    let finished = Finished {
        time: finished_at,
        generation: update.generation,
        requested_at: requested_at.cloned(),
    };
    ctx.set_finished(&key, finished);
    let revision = report
        .revision
        .as_deref()
        .map(short_revision)
        .unwrap_or("unknown");
    let s = &report.summary;
    if let Some(step) = report.failure {
        let first = report.first_problem().unwrap_or_default();
        let note = format!("revision {revision}: {first}");
        publish(ctx, sync, EventType::Warning, step.reason(), note).await;
    } else if s.changed() > 0 {
        let note = format!(
            "revision {revision}: {} created, {} configured, {} pruned, {} unchanged",
            s.created, s.configured, s.pruned, s.unchanged
        );
        publish(ctx, sync, EventType::Normal, "Synced", note).await;
    }
    let rolls_back = rollback::target(sync, update.old, report).is_some();
    notifications::after_sync(ctx, sync, report, rolls_back).await;
    Ok(finished_at)
}

/// After a sync: remembers the objects it left unhealthy (not failed for good: those need a new
/// commit), so their health is read again between syncs. Returns whether there are any.
async fn remember_unhealthy(ctx: &Context, sync: &GitSync, report: &SyncReport) -> bool {
    let objects: Vec<_> = report
        .objects
        .iter()
        .filter(|o| o.health.as_ref().is_some_and(|h| !h.is_healthy()))
        .filter_map(|o| o.target.clone())
        .collect();
    let client = match objects.is_empty() {
        true => None,
        false => clients(ctx, sync).await.ok(),
    };
    let recheck = client.map(|clients| Recheck {
        client: clients.apply,
        objects,
        reported: report.summary.unhealthy,
        next: Instant::now() + HEALTH_RECHECK,
    });
    let any = recheck.is_some();
    ctx.set_recheck(&key_of(sync), recheck);
    any
}

/// Between syncs: reads the health of the objects the last sync left unhealthy (only those) and
/// updates the gauge and the status's unhealthy count when it changed. Returns how long until the
/// next read, while any object is still unhealthy.
async fn recheck_health(
    ctx: &Context,
    sync: &GitSync,
    key: &str,
) -> Result<Option<Duration>, ControllerError> {
    let Some(recheck) = ctx.recheck(key) else {
        return Ok(None);
    };
    let now = Instant::now();
    if recheck.next > now {
        return Ok(Some(recheck.next - now));
    }
    let (mut still, mut failed) = (Vec::new(), Vec::new());
    for (object, resource) in recheck.objects {
        let health = crate::sync::read_health(&recheck.client, &object, &resource).await;
        if let Some(h @ crate::health::Health::Failed(_)) = &health {
            failed.push(format!("{object} ({h})"));
        }
        if health.is_none_or(|h| !h.is_healthy()) {
            still.push((object, resource));
        }
    }
    notifications::after_health_read(ctx, sync, &failed).await;
    let count = still.len();
    if count != recheck.reported {
        info!(sync = %key, unhealthy = count, "health re-read between syncs");
        ctx.metrics.set_unhealthy(key, count);
        patch_status(ctx, sync, json!({"summary": {"unhealthy": count}})).await?;
    }
    let next = (!still.is_empty()).then(|| Recheck {
        objects: still,
        reported: count,
        next: Instant::now() + HEALTH_RECHECK,
        ..recheck
    });
    let wait = next.as_ref().map(|_| HEALTH_RECHECK);
    ctx.set_recheck(key, next);
    Ok(wait)
}

/// After a full sync: the watches follow what it applied (or stop, after a failure).
async fn follow_applied(ctx: &Context, sync: &GitSync, report: &SyncReport) {
    let key = key_of(sync);
    let parent = parent_of(sync);
    match clients(ctx, sync).await {
        Ok(clients) => {
            (ctx.watches).sync_finished(&key, sync, &clients.apply, &parent.id(), report)
        }
        Err(_) => ctx.watches.forget(&key),
    }
    ctx.metrics.set_watched(&key, ctx.watches.watched(&key));
}

/// An interval while the watches are quiet: fetch only. When the revision is still the one
/// applied, nothing in the cluster is read or written but this GitSync's status (its
/// lastSyncTime); returns when that was. None: the revision moved or the fetch failed (the
/// full sync that follows reports it).
async fn idle_interval(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    timeout: Duration,
    applied: &str,
) -> Result<Option<Timestamp>, ControllerError> {
    let key = key_of(sync);
    let work_dir = work_dir(ctx, sync);
    let Ok(spec) = source_spec(ctx, sync, &work_dir, timeout).await else {
        return Ok(None);
    };
    match crate::source::fetch(&spec, &work_dir.join("git")).await {
        Ok(checkout) if checkout.revision == applied => {}
        _ => return Ok(None),
    }
    ctx.watches.idle_interval(&key);
    ctx.metrics.record_idle_interval(&key);
    let finished_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(finished_at);
    patch_status(ctx, sync, json!({ "lastSyncTime": time })).await?;
    ctx.set_finished(
        &key,
        Finished {
            time: finished_at,
            generation: update.generation,
            requested_at: update.old.last_handled_requested_at.clone(),
        },
    );
    tracing::debug!(sync = %key, "interval: revision unchanged, no drift seen");
    Ok(Some(finished_at))
}

/// Re-applies the objects the watches saw drift on, from the applied revision's files; records
/// it in metrics and an Event.
async fn repair_drift(ctx: &Context, sync: &GitSync, timeout: Duration, repair: Repair) {
    let key = key_of(sync);
    for object in &repair.given_up {
        warn!(sync = %key, %object, "changed again after {} repairs in a minute: something else \
            keeps changing it; left to the next full sync", super::watches::REPAIRS_PER_WINDOW);
    }
    if repair.objects.is_empty() {
        return;
    }
    let prepared = async {
        let clients = clients(ctx, sync).await?;
        let mut options = sync_options(ctx, sync, timeout);
        with_secrets(ctx, sync, &mut options).await?;
        Ok::<_, CredentialsError>((clients, options))
    };
    let report = match prepared.await {
        Ok((clients, mut options)) => {
            options.target.paths = repair.files;
            options.prune.enabled = false;
            crate::sync::repair(&clients, &repair.checkout, &options, &repair.objects).await
        }
        Err(e) => SyncReport::failed(&sync.name_any(), SyncError::Credentials(Box::new(e))),
    };
    ctx.watches.repair_finished(&key, &report);
    ctx.metrics.record_repair(&key, &report);
    report_repair(ctx, sync, &repair.checkout.revision, &report).await;
    notifications::after_repair(ctx, sync, &report).await;
    if sync.spec.drift == DriftPolicy::Report
        && let Err(e) = record_repaired_drift(ctx, sync, &report).await
    {
        warn!(sync = %key, error = %e, "recording drift in the status");
    }
    drop(report);
    crate::memory::release_free_memory();
}

/// A Warning Event naming the objects newly found drifted (`drift: report`), or whose drifted
/// fields changed; nothing when the drift is the one already reported.
async fn announce_drift(
    ctx: &Context,
    sync: &GitSync,
    before: &[DriftedObject],
    now: &[DriftedObject],
) {
    let new: Vec<String> = (now.iter())
        .filter(|d| !before.contains(d))
        .map(|d| format!("{} ({})", d.object, d.fields))
        .collect();
    if new.is_empty() {
        return;
    }
    let shown = new.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    let more = match new.len().saturating_sub(5) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    let note = format!("changed in the cluster, left as it is (drift: report): {shown}{more}");
    warn!(sync = %key_of(sync), objects = new.len(), "drift found, not corrected");
    publish(ctx, sync, EventType::Warning, reason::DRIFT_DETECTED, note).await;
}

/// After a repair in `drift: report` mode: the objects it found drifted join the status's list.
async fn record_repaired_drift(
    ctx: &Context,
    sync: &GitSync,
    report: &SyncReport,
) -> Result<(), ControllerError> {
    let before = sync
        .status
        .as_ref()
        .map(|s| s.drift.clone())
        .unwrap_or_default();
    let drift = drifted_objects(report, &before);
    ctx.metrics.set_drifted(&key_of(sync), drift.len());
    announce_drift(ctx, sync, &before, &drift).await;
    if drift == before {
        return Ok(());
    }
    let count = drift.len();
    let listed: Vec<_> = drift.into_iter().take(DRIFT_LIMIT).collect();
    patch_status(
        ctx,
        sync,
        json!({"drift": listed, "summary": {"drifted": count}}),
    )
    .await
}

/// A repair's Event: the objects it re-applied, or why it failed.
async fn report_repair(ctx: &Context, sync: &GitSync, revision: &str, report: &SyncReport) {
    let key = key_of(sync);
    let revision = short_revision(revision);
    if let Some(step) = report.failure {
        let first = report.first_problem().unwrap_or_default();
        let note = format!("revision {revision}: repairing drift: {first}; left to the next sync");
        publish(ctx, sync, EventType::Warning, step.reason(), note).await;
        return;
    }
    let written: Vec<&str> = (report.objects.iter())
        .filter(|o| o.result.writes())
        .map(|o| o.object.as_str())
        .collect();
    if written.is_empty() {
        return;
    }
    let shown = written
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = written.len().saturating_sub(5);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let note =
        format!("revision {revision}: changed in the cluster, re-applied from Git: {shown}{more}");
    info!(sync = %key, objects = written.len(), "drift repaired");
    publish(ctx, sync, EventType::Normal, reason::DRIFT_CORRECTED, note).await;
}
