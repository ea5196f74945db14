//! What the controller tells people after a sync: notifications to the receivers a GitSync
//! names (or the controller's defaults), deduplicated, and the commit's status on the forge.
//! Nothing here waits for a receiver: messages are queued for `notify::deliver`.
use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::warn;

use super::context::{Context, key_of};
use super::credentials::SecretData;
use super::notifier::StatusPoster;
use crate::crd::GitSync;
use crate::health::Health;
use crate::notify::dedup::{Decision, Outcome};
use crate::notify::deliver::{DeliveryKind, Job};
use crate::notify::forge::{self, State};
use crate::notify::payload::{self, Provider, Target, endpoint};
use crate::notify::{Counts, EventKind, Notification};
use crate::prune::PruneBlocked;
use crate::sync::SyncReport;

/// The problem a sync ended with, for deduplication.
fn outcome_of(report: &SyncReport) -> (Outcome, String) {
    if let Some(step) = report.failure {
        let message = format!(
            "{step} failed: {}",
            report.first_problem().unwrap_or_default()
        );
        let event = match step.stalls() {
            true => EventKind::Stalled,
            false => EventKind::Failed,
        };
        let about = message.clone();
        return (Outcome::Problem { event, about }, message);
    }
    if let Some(
        blocked @ (PruneBlocked::TooMany(_)
        | PruneBlocked::EmptySource
        | PruneBlocked::IncompleteInventory(_)),
    ) = &report.prune_blocked
    {
        let message = blocked.to_string();
        let event = EventKind::PruneBlocked;
        return (
            Outcome::Problem {
                event,
                about: message.clone(),
            },
            message,
        );
    }
    // Objects still progressing are not news (a sync that waits fails on them instead); ones
    // that will not become healthy by waiting are.
    let failed: Vec<String> = (report.objects.iter())
        .filter_map(|o| match &o.health {
            Some(h @ Health::Failed(_)) => Some(format!("{} ({h})", o.object)),
            _ => None,
        })
        .collect();
    unhealthy_outcome(&failed)
}

/// The outcome for objects whose health failed (`Fine` when there are none).
fn unhealthy_outcome(failed: &[String]) -> (Outcome, String) {
    if failed.is_empty() {
        return (Outcome::Fine, String::new());
    }
    let names: Vec<&str> = failed.iter().take(5).map(String::as_str).collect();
    let mut message = format!("not healthy: {}", names.join(", "));
    if failed.len() > 5 {
        message.push_str(&format!(" and {} more", failed.len() - 5));
    }
    let about = failed.join(",");
    let event = EventKind::Unhealthy;
    (Outcome::Problem { event, about }, message)
}

/// Between syncs, the health of what the last sync left unhealthy was read again: objects that
/// failed are told about; when all are healthy, the end of an `unhealthy` problem is.
pub async fn after_health_read(ctx: &Context, sync: &GitSync, failed: &[String]) {
    let key = key_of(sync);
    let (outcome, message) = unhealthy_outcome(failed);
    if outcome == Outcome::Fine && ctx.notifier.open_event(&key) != Some(EventKind::Unhealthy) {
        return;
    }
    let status = sync.status.as_ref();
    let report = SyncReport {
        revision: status.and_then(|s| s.last_applied_revision.clone()),
        ..Default::default()
    };
    match ctx
        .notifier
        .decide(&key, outcome, ctx.config.notify.reminder)
    {
        Decision::Tell(event) => tell(ctx, sync, &report, vec![(event, message)]).await,
        Decision::Recovered => {
            let message = "every object is healthy again".to_string();
            tell(ctx, sync, &report, vec![(EventKind::Recovered, message)]).await
        }
        Decision::Quiet => {}
    }
}

/// After a full sync: the notifications it calls for, and the commit's final status. `quiet`:
/// a rollback follows and says what happened instead.
pub async fn after_sync(ctx: &Context, sync: &GitSync, report: &SyncReport, quiet: bool) {
    if !quiet {
        post_result(ctx, sync, report, None).await;
    }
    if quiet || report.dry_run {
        return;
    }
    let key = key_of(sync);
    let (outcome, message) = outcome_of(report);
    let mut events = vec![];
    match ctx
        .notifier
        .decide(&key, outcome, ctx.config.notify.reminder)
    {
        Decision::Tell(event) => events.push((event, message)),
        Decision::Recovered => events.push((EventKind::Recovered, recovered(report))),
        Decision::Quiet => {}
    }
    let s = &report.summary;
    if report.succeeded() && s.changed() > 0 {
        let short = crate::crd::short_revision(report.revision.as_deref().unwrap_or_default());
        events.push((EventKind::Applied, format!("revision {short} applied")));
    }
    if s.drift_corrected > 0 {
        let objects = corrected(report);
        events.push((
            EventKind::DriftCorrected,
            format!("put back as Git says: {objects}"),
        ));
    }
    tell(ctx, sync, report, events).await;
}

/// After a repair between syncs: objects changed in the cluster were put back.
pub async fn after_repair(ctx: &Context, sync: &GitSync, report: &SyncReport) {
    let written = report.summary.created + report.summary.configured + report.summary.recreated;
    if written > 0 && report.succeeded() {
        let message = format!(
            "changed in the cluster, put back as Git says: {}",
            corrected(report)
        );
        tell(
            ctx,
            sync,
            report,
            vec![(EventKind::DriftCorrected, message)],
        )
        .await;
    }
}

/// After an automatic rollback from `bad` (its report) to the revision `rollback` applied.
pub async fn after_rollback(
    ctx: &Context,
    sync: &GitSync,
    bad: &SyncReport,
    rollback: &SyncReport,
    message: &str,
) {
    let key = key_of(sync);
    let event = match rollback.succeeded() {
        true => EventKind::RolledBack,
        false => EventKind::Failed,
    };
    let text = message.to_string();
    let outcome = Outcome::Problem {
        event,
        about: text.clone(),
    };
    post_result(ctx, sync, bad, Some(&text)).await;
    if let Decision::Tell(event) = ctx
        .notifier
        .decide(&key, outcome, ctx.config.notify.reminder)
    {
        tell(ctx, sync, bad, vec![(event, text)]).await;
    }
}

fn recovered(report: &SyncReport) -> String {
    let short = crate::crd::short_revision(report.revision.as_deref().unwrap_or_default());
    match report.health_checked {
        true => format!("revision {short} applied and healthy: the problem is over"),
        false => format!("revision {short} applied: the problem is over"),
    }
}

/// The objects a report wrote, shortened for a message.
fn corrected(report: &SyncReport) -> String {
    let written: Vec<&str> = (report.objects.iter())
        .filter(|o| o.drift_corrected || o.result.writes())
        .map(|o| o.object.as_str())
        .collect();
    let mut text = written
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if written.len() > 5 {
        text.push_str(&format!(" and {} more", written.len() - 5));
    }
    text
}

/// Queues each event for every receiver of the GitSync that asked for it (their Secrets are
/// read once for all of them).
async fn tell(
    ctx: &Context,
    sync: &GitSync,
    report: &SyncReport,
    events: Vec<(EventKind, String)>,
) {
    let wanted: Vec<EventKind> = events.iter().map(|(e, _)| *e).collect();
    if wanted.is_empty() {
        return;
    }
    let targets = targets(ctx, sync, &wanted).await;
    if targets.is_empty() {
        return;
    }
    let Some(deliverer) = ctx.notifier.deliverer() else {
        return;
    };
    let key = key_of(sync);
    for (event, message) in events {
        let notification = notification(ctx, sync, report, event, message);
        for target in targets.iter().filter(|t| t.wants(event)) {
            let sequence = ctx.notifier.sequence.fetch_add(1, Ordering::Relaxed);
            let request = match payload::request(target, &notification, sequence) {
                Ok(r) => r,
                Err(e) => {
                    warn!(sync = %key, receiver = ?target, "notification not sent: {e}");
                    continue;
                }
            };
            let kind = DeliveryKind::Notification {
                provider: target.provider.as_str(),
                event: event.as_str(),
            };
            let job = Job {
                sync: key.clone(),
                endpoint: endpoint(&target.address),
                kind,
                request,
            };
            deliverer.send(&target.queue_key(), job);
        }
    }
}

/// What a receiver is told about `event`, from the sync's report.
fn notification(
    ctx: &Context,
    sync: &GitSync,
    report: &SyncReport,
    event: EventKind,
    message: String,
) -> Notification {
    let s = &report.summary;
    Notification {
        namespace: sync.namespace().unwrap_or_default(),
        name: sync.name_any(),
        event,
        revision: report.revision.clone(),
        message,
        summary: matches!(event, EventKind::Applied | EventKind::Recovered).then_some(Counts {
            created: s.created,
            configured: s.configured,
            pruned: s.pruned,
            unchanged: s.unchanged,
        }),
        commit: report.commit.clone(),
        url: ctx.config.notify.status_page_url.clone(),
        time: Timestamp::now().to_string(),
    }
}

/// The receivers of the GitSync (or the defaults) that want any of `events`, read from their
/// Secrets. A Secret that cannot be read is a warning: notifications never fail a sync.
async fn targets(ctx: &Context, sync: &GitSync, events: &[EventKind]) -> Vec<Target> {
    let namespace = sync.namespace().unwrap_or_default();
    let wanted: Vec<(Provider, String, String, Vec<EventKind>)> = match &sync.spec.notify {
        Some(list) => (list.iter())
            .map(|n| {
                (
                    n.provider,
                    namespace.clone(),
                    n.secret_ref.name.clone(),
                    n.events(),
                )
            })
            .collect(),
        None => (ctx.config.notify.defaults.iter())
            .map(|d| {
                (
                    d.provider,
                    ctx.config.notify.namespace.clone(),
                    d.secret.clone(),
                    d.events.clone(),
                )
            })
            .collect(),
    };
    let mut targets = vec![];
    for (provider, secret_namespace, secret, wants) in wanted {
        if !events.iter().any(|e| wants.contains(e)) {
            continue;
        }
        let read = async {
            let data = SecretData::read(ctx, &secret_namespace, &secret).await?;
            Ok::<_, super::credentials::CredentialsError>(Target {
                provider,
                address: data.text("address")?.unwrap_or_default().trim().to_string(),
                token: data.text("token")?.map(|t| t.trim().to_string()),
                channel: data.text("channel")?.map(|t| t.trim().to_string()),
                hmac_key: data.text("hmacKey")?,
                events: wants.clone(),
            })
        };
        match read.await {
            Ok(target) => targets.push(target),
            Err(e) => {
                warn!(sync = %key_of(sync), provider = provider.as_str(), "notification not sent: {e}")
            }
        }
    }
    targets
}

/// The GitSync's commit-status poster, when it asks for one and its Secret can be read (a
/// problem is a warning: commit statuses never fail a sync).
pub async fn status_poster(ctx: &Context, sync: &GitSync) -> Option<Arc<StatusPoster>> {
    let spec = sync.spec.commit_status.as_ref()?;
    let deliverer = ctx.notifier.deliverer()?;
    let key = key_of(sync);
    let repo = match forge::repository(&sync.spec.url, spec.forge, spec.api_url.as_deref()) {
        Ok(repo) => repo,
        Err(e) => {
            warn!(sync = %key, "commit status not posted: {e}");
            return None;
        }
    };
    let namespace = sync.namespace().unwrap_or_default();
    let secret_key = spec.secret_ref.key.as_deref().unwrap_or("token");
    let token = async {
        let data = SecretData::read(ctx, &namespace, &spec.secret_ref.name).await?;
        data.text(secret_key)
    };
    let token = match token.await {
        Ok(Some(token)) => token.trim().to_string(),
        Ok(None) => {
            let name = &spec.secret_ref.name;
            warn!(sync = %key, "commit status not posted: Secret {namespace}/{name} has no key {secret_key}");
            return None;
        }
        Err(e) => {
            warn!(sync = %key, "commit status not posted: {e}");
            return None;
        }
    };
    let context = (spec.context.clone())
        .unwrap_or_else(|| format!("kubesync/{namespace}/{}", sync.name_any()));
    Some(Arc::new(StatusPoster {
        deliverer,
        statuses: Arc::clone(&ctx.notifier.statuses),
        repo,
        token,
        context,
        link: ctx.config.notify.status_page_url.clone(),
        key,
    }))
}

/// Success or failure of the revision `report` synced; `failure`: what to say instead of the
/// report's own first problem (a rollback).
async fn post_result(ctx: &Context, sync: &GitSync, report: &SyncReport, failure: Option<&str>) {
    let Some(revision) = report.revision.as_deref() else {
        return;
    };
    if sync.spec.commit_status.is_none() || report.dry_run {
        return;
    }
    let s = &report.summary;
    let (state, description) = match (report.succeeded(), failure) {
        (_, Some(text)) => (State::Failure, text.to_string()),
        (true, None) => {
            let healthy = if report.health_checked {
                ", healthy"
            } else {
                ""
            };
            let text = format!(
                "applied{healthy}: {} created, {} configured, {} pruned, {} unchanged",
                s.created, s.configured, s.pruned, s.unchanged
            );
            (State::Success, text)
        }
        (false, None) => (State::Failure, outcome_of(report).1),
    };
    // The poster the sync was given (its Secret read once per sync), else a new one.
    let poster = match ctx.notifier.take_poster(&key_of(sync)) {
        Some(poster) => Some(poster),
        None => status_poster(ctx, sync).await,
    };
    if let Some(poster) = poster {
        poster.post(revision, state, &description);
    }
}
