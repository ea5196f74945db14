//! Automatic rollback (`spec.rollback`): when a revision's objects are not healthy within the
//! GitSync's timeout, the last revision that became healthy is applied again (its commit, from
//! the repository cache or fetched by id). The GitSync is then `Ready=False, reason=RolledBack`
//! naming both revisions, a Warning Event says so, and the bad revision is held back: later
//! intervals fetch, see it is still the branch's head, and apply nothing, until a new commit,
//! a spec change or a `kubesync.dev/requestedAt` request.
//!
//! What the bad revision added is not pruned by the rollback unless `rollback.prune` allows
//! it: those objects stay in the set, for the next good revision's sync to prune.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::warn;

use super::context::{Context, ControllerError, key_of};
use super::engine::run_sync;
use super::events::publish;
use super::notifications;
use super::status::{StatusUpdate, patch_status, reason};
use crate::crd::{GitSync, GitSyncStatus, REQUESTED_AT_ANNOTATION, RolledBack, short_revision};
use crate::sync::{Step, SyncReport};

/// The revision to roll back to, when `report` says its revision was not healthy in time and
/// an earlier one was (plain directories have no commit to go back to).
pub fn target(sync: &GitSync, old: &GitSyncStatus, report: &SyncReport) -> Option<String> {
    if !sync.spec.rolls_back() || report.failure != Some(Step::Health) {
        return None;
    }
    let bad = report.revision.as_deref()?;
    let good = old.last_healthy_revision.as_deref()?;
    (good != bad && !good.starts_with("sha256:")).then(|| good.to_string())
}

/// The revision a rollback holds back, while neither the spec nor a request changed since.
pub fn held(sync: &GitSync, old: &GitSyncStatus) -> Option<String> {
    let rolled = old.rolled_back.as_ref()?;
    let requested = sync.annotations().get(REQUESTED_AT_ANNOTATION);
    let unchanged =
        rolled.generation == sync.metadata.generation && rolled.requested_at.as_ref() == requested;
    (sync.spec.rolls_back() && unchanged).then(|| rolled.from.clone())
}

/// After a sync: when its revision was not healthy in time and the GitSync rolls back, the last
/// healthy revision is applied again and its report returned; otherwise `report` itself.
pub async fn if_unhealthy(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    timeout: Duration,
    report: SyncReport,
) -> Result<SyncReport, ControllerError> {
    match target(sync, update.old, &report) {
        Some(good) => roll_back(ctx, sync, update, timeout, &report, good).await,
        None => Ok(report),
    }
}

/// Applies `good` again in place of the revision `bad` synced, and records it (status, Event,
/// metric). Returns the rollback's own report: what the cluster now holds.
pub async fn roll_back(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
    timeout: Duration,
    bad: &SyncReport,
    good: String,
) -> Result<SyncReport, ControllerError> {
    let key = key_of(sync);
    let from = bad.revision.clone().unwrap_or_default();
    let cause = bad.first_problem().unwrap_or_default();
    let report = run_sync(ctx, sync, timeout, Some(&good)).await;
    ctx.metrics.record_rollback(&key, report.succeeded());
    let (short_from, short_to) = (short_revision(&from), short_revision(&good));
    if let Some(problem) = report.first_problem().filter(|_| !report.succeeded()) {
        let note = format!("rolling back from {short_from} to {short_to} failed: {problem}");
        warn!(sync = %key, "{note}");
        publish(
            ctx,
            sync,
            EventType::Warning,
            reason::ROLLBACK_FAILED,
            note.clone(),
        )
        .await;
        notifications::after_rollback(ctx, sync, bad, &report, &note).await;
        return Ok(report);
    }
    let message = format!(
        "revision {short_from} was not healthy within {timeout:?} ({cause}); rolled back to \
         {short_to}; {short_from} is not retried until a new commit or a request"
    );
    let rolled = RolledBack {
        from,
        to: good,
        time: Some(Time(Timestamp::now())),
        generation: sync.metadata.generation,
        requested_at: sync.annotations().get(REQUESTED_AT_ANNOTATION).cloned(),
    };
    warn!(sync = %key, "{message}");
    patch_status(ctx, sync, update.rolled_back(&rolled, &message)).await?;
    publish(
        ctx,
        sync,
        EventType::Warning,
        reason::ROLLED_BACK,
        message.clone(),
    )
    .await;
    notifications::after_rollback(ctx, sync, bad, &report, &message).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sync(rollback: bool) -> GitSync {
        let spec = json!({"url": "https://example.org/r.git", "rollback": {"enabled": rollback}});
        let mut sync = GitSync::new("app", serde_json::from_value(spec).expect("spec"));
        sync.metadata.generation = Some(3);
        sync
    }

    fn unhealthy(revision: &str) -> SyncReport {
        let mut report = SyncReport {
            revision: Some(revision.into()),
            ..Default::default()
        };
        report.fail(crate::sync::SyncError::Unhealthy {
            objects: "deployment.apps/web".into(),
        });
        report
    }

    #[test]
    fn only_an_unhealthy_revision_after_a_healthy_one_rolls_back_when_enabled() {
        let old = GitSyncStatus {
            last_healthy_revision: Some("a".repeat(40)),
            ..Default::default()
        };
        let bad = unhealthy(&"b".repeat(40));
        assert_eq!(target(&sync(true), &old, &bad), Some("a".repeat(40)));
        assert_eq!(target(&sync(false), &old, &bad), None, "off by default");
        assert_eq!(target(&sync(true), &GitSyncStatus::default(), &bad), None);
        assert_eq!(target(&sync(true), &old, &unhealthy(&"a".repeat(40))), None);
        let mut fetch_failed = SyncReport::default();
        fetch_failed.fail(crate::sync::SyncError::Stopped);
        assert_eq!(target(&sync(true), &old, &fetch_failed), None);
    }

    #[test]
    fn a_rolled_back_revision_is_held_until_the_spec_or_a_request_changes() {
        let rolled = RolledBack {
            from: "b".repeat(40),
            to: "a".repeat(40),
            generation: Some(3),
            ..Default::default()
        };
        let old = GitSyncStatus {
            rolled_back: Some(rolled),
            ..Default::default()
        };
        assert_eq!(held(&sync(true), &old), Some("b".repeat(40)));
        let mut edited = sync(true);
        edited.metadata.generation = Some(4);
        assert_eq!(held(&edited, &old), None);
        let mut requested = sync(true);
        requested
            .annotations_mut()
            .insert(REQUESTED_AT_ANNOTATION.into(), "now".into());
        assert_eq!(held(&requested, &old), None);
    }
}
