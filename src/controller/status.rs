//! The GitSync's status: kstatus conditions (`Ready`, `Reconciling`, `Stalled`), the last
//! revisions, a summary and a short history. One builder per moment of a reconcile: invalid,
//! suspended, progressing, finished.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::context::{Context, ControllerError, key_of};
use crate::crd::{
    DriftedObject, GitSync, GitSyncStatus, ReleasedFields, RolledBack, SyncHistoryEntry,
    SyncSummary, short_revision,
};
use crate::sync::SyncReport;

/// Condition reasons (kstatus) besides the failed step's own (`Step::reason`).
pub mod reason {
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
    pub const WAITING_FOR_CRD: &str = "WaitingForCRD";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PROGRESSING: &str = "Progressing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SUSPENDED: &str = "Suspended";
    pub const INTERRUPTED: &str = "Interrupted";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
}

/// Messages in conditions, Events and `lastError` are cut at this many characters.
const MESSAGE_LIMIT: usize = 1024;

pub fn condition(
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
        message: message.chars().take(MESSAGE_LIMIT).collect(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Keeps a condition's lastTransitionTime when its status did not change.
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
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

/// Whether the status shows a sync that started and never finished: `Reconciling` left at
/// Progressing by a process that stopped (SIGKILL, lost lease) before writing the result.
pub fn interrupted_sync(status: &GitSyncStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True" && c.reason == reason::PROGRESSING)
}

/// The replica an unfinished sync runs (or ran) on, from the `Reconciling` message
/// (`syncing (<why>) on <identity>`), and since when.
pub fn syncing_on(status: &GitSyncStatus) -> Option<(&str, &Time)> {
    let left = interrupted_sync(status)?;
    let (_, identity) = left.message.rsplit_once(") on ")?;
    Some((identity, &left.last_transition_time))
}

/// Builds the status patches of one reconcile from the status it started with.
pub struct StatusUpdate<'a> {
    pub old: &'a GitSyncStatus,
    pub generation: Option<i64>,
}

impl StatusUpdate<'_> {
    fn conditions(&self, new: Vec<Condition>) -> Vec<Condition> {
        merge_conditions(&self.old.conditions, new)
    }

    /// The spec cannot be synced: stalled until it changes.
    pub fn invalid(&self, message: &str) -> Value {
        let g = self.generation;
        let conditions = self.conditions(vec![
            condition("Ready", false, reason::INVALID_SPEC, message, g),
            condition("Reconciling", false, reason::INVALID_SPEC, "", g),
            condition("Stalled", true, reason::INVALID_SPEC, message, g),
        ]);
        json!({"observedGeneration": g, "conditions": conditions, "lastError": message})
    }

    /// Suspended: `Ready` stays as the last sync left it.
    pub fn suspended(&self) -> Value {
        let g = self.generation;
        let mut conditions: Vec<Condition> = (self.old.conditions.iter())
            .filter(|c| c.type_ == "Ready")
            .cloned()
            .collect();
        conditions.push(condition(
            "Reconciling",
            false,
            reason::SUSPENDED,
            "suspended",
            g,
        ));
        conditions.push(condition("Stalled", false, reason::SUSPENDED, "", g));
        json!({"observedGeneration": g, "conditions": self.conditions(conditions)})
    }

    /// A sync runs now: `Reconciling` is True, with why and on which replica.
    pub fn progressing(&self, message: &str) -> Value {
        let mut conditions = self.old.conditions.clone();
        conditions.retain(|c| c.type_ != "Reconciling");
        conditions.push(condition(
            "Reconciling",
            true,
            reason::PROGRESSING,
            message,
            self.generation,
        ));
        json!({"conditions": self.conditions(conditions)})
    }

    /// A sync finished (or failed) at `finished_at`.
    pub fn finished(
        &self,
        report: &SyncReport,
        managed: i64,
        requested_at: Option<&String>,
        finished_at: Timestamp,
    ) -> Value {
        let old = self.old;
        let ok = report.succeeded();
        let last_error = report.first_problem().map(|e| {
            let mut e: String = e.chars().take(MESSAGE_LIMIT).collect();
            if e.len() >= MESSAGE_LIMIT {
                e.push('…');
            }
            e
        });
        let waiting = report.waiting_for_crd.len();
        let ready_message = match ok {
            true if waiting > 0 => format!(
                "{waiting} object(s) wait for their CRD, nothing pruned; first: {}",
                report.waiting_for_crd[0]
            ),
            true => format!(
                "applied revision {}",
                report
                    .revision
                    .as_deref()
                    .map(short_revision)
                    .unwrap_or("?")
            ),
            false => last_error.clone().unwrap_or_default(),
        };
        let last_applied = match ok && waiting == 0 {
            true => report.revision.clone(),
            false => old.last_applied_revision.clone(),
        };
        let waiting_since = match (ok, waiting) {
            (true, 0) => None,
            (true, _) => Some(
                old.waiting_for_crd_since
                    .clone()
                    .unwrap_or(Time(finished_at)),
            ),
            (false, _) => old.waiting_for_crd_since.clone(),
        };
        let now = Time(finished_at);
        json!({
            "observedGeneration": self.generation,
            "conditions": self.finished_conditions(report, &ready_message),
            "lastAppliedRevision": last_applied,
            "lastAttemptedRevision": report.revision.clone().or(old.last_attempted_revision.clone()),
            "shortRevision": last_applied.as_deref().map(short_revision),
            "lastSyncTime": now,
            "lastHandledRequestedAt": requested_at,
            "summary": self.summary(report, managed),
            "history": self.history(report, now),
            "lastError": last_error,
            "releasedFields": self.released_after(report),
            "waitingForCrd": report.waiting_for_crd.iter().take(DRIFT_LIMIT).collect::<Vec<_>>(),
            "waitingForCrdSince": waiting_since,
            "helmChart": match &report.chart {
                Some(chart) => Some(crate::crd::HelmChartStatus {
                    version: chart.version.clone(),
                    digest: chart.digest.clone(),
                }),
                None => old.helm_chart.clone(),
            },
            "lastHealthyRevision": match ok && report.health_checked {
                true => report.revision.clone(),
                false => old.last_healthy_revision.clone(),
            },
            "rolledBack": match ok {
                true => None,
                false => old.rolled_back.clone(),
            },
            "drift": self.drift_after(report).into_iter().take(DRIFT_LIMIT).collect::<Vec<_>>(),
        })
    }

    /// The drifted objects after a sync: a successful one looked at every object; a failed one
    /// may not have, so what it did not see stays as the last status had it.
    pub fn drift_after(&self, report: &SyncReport) -> Vec<DriftedObject> {
        match report.succeeded() {
            true => drifted_objects(report, &[]),
            false => drifted_objects(report, &self.old.drift),
        }
    }

    /// Waiting for dependencies: not Ready, not syncing; stalled for a cycle.
    pub fn waiting(&self, why: &str, message: &str, stalled: bool) -> Value {
        let g = self.generation;
        let conditions = self.conditions(vec![
            condition("Ready", false, why, message, g),
            condition("Reconciling", false, why, "", g),
            match stalled {
                true => condition("Stalled", true, why, message, g),
                false => condition("Stalled", false, why, "", g),
            },
        ]);
        json!({"conditions": conditions})
    }

    /// After a rollback: not Ready, stalled until a new commit, naming both revisions; the
    /// last healthy revision is applied again.
    pub fn rolled_back(&self, rolled: &RolledBack, message: &str) -> Value {
        let g = self.generation;
        let conditions = self.conditions(vec![
            condition("Ready", false, reason::ROLLED_BACK, message, g),
            condition("Reconciling", false, reason::ROLLED_BACK, "", g),
            condition("Stalled", true, reason::ROLLED_BACK, message, g),
        ]);
        json!({
            "conditions": conditions,
            "lastAppliedRevision": rolled.to,
            "shortRevision": short_revision(&rolled.to),
            "rolledBack": rolled,
        })
    }

    /// The fields left to other controllers: as this sync found them, or as they were when it
    /// failed before it could tell.
    fn released_after(&self, report: &SyncReport) -> Vec<ReleasedFields> {
        if !report.succeeded() && report.released.is_empty() {
            return self.old.released_fields.clone();
        }
        (report.released.iter())
            .take(DRIFT_LIMIT)
            .map(|r| ReleasedFields {
                object: r.object.clone(),
                fields: r.fields.join(", "),
                to: r.to.clone(),
            })
            .collect()
    }

    fn finished_conditions(&self, report: &SyncReport, ready_message: &str) -> Vec<Condition> {
        let g = self.generation;
        let (ready, reason) = match report.failure {
            None if !report.waiting_for_crd.is_empty() => (false, reason::WAITING_FOR_CRD),
            None => (true, reason::SUCCEEDED),
            Some(step) => (false, step.reason()),
        };
        let stalled = report.failure.is_some_and(|s| s.stalls());
        self.conditions(vec![
            condition("Ready", ready, reason, ready_message, g),
            condition("Reconciling", false, reason, "", g),
            match stalled {
                true => condition("Stalled", true, reason, ready_message, g),
                false => condition("Stalled", false, reason::SUCCEEDED, "", g),
            },
        ])
    }

    fn summary(&self, report: &SyncReport, managed: i64) -> SyncSummary {
        let s = &report.summary;
        let kept_managed = self.old.summary.as_ref().map(|s| s.managed);
        SyncSummary {
            managed: match report.succeeded() {
                true => managed,
                false => kept_managed.unwrap_or(managed),
            },
            applied: (s.created + s.configured) as i64,
            pruned: s.pruned as i64,
            failed: s.failed as i64,
            drift_corrected: s.drift_corrected as i64,
            drifted: self.drift_after(report).len() as i64,
            unhealthy: s.unhealthy as i64,
        }
    }

    /// The last five syncs, newest first.
    fn history(&self, report: &SyncReport, now: Time) -> Vec<SyncHistoryEntry> {
        let mut history = vec![SyncHistoryEntry {
            revision: report.revision.clone(),
            result: if report.succeeded() {
                "Succeeded"
            } else {
                "Failed"
            }
            .into(),
            duration_seconds: (report.duration_seconds * 1000.0).round() / 1000.0,
            time: now,
        }];
        history.extend(self.old.history.iter().take(4).cloned());
        history
    }
}

/// How many drifted objects the status lists.
pub const DRIFT_LIMIT: usize = 20;

/// The objects a sync or repair left drifted (`drift: report`), then those of `earlier` that it
/// did not look at again.
pub fn drifted_objects(report: &SyncReport, earlier: &[DriftedObject]) -> Vec<DriftedObject> {
    let seen: Vec<&str> = report.objects.iter().map(|o| o.object.as_str()).collect();
    let now = report.objects.iter().filter_map(|o| match &o.result {
        crate::outcome::Action::Drifted(fields) => Some(DriftedObject {
            object: o.object.clone(),
            fields: fields.clone(),
        }),
        _ => None,
    });
    let kept = (earlier.iter())
        .filter(|d| !seen.contains(&d.object.as_str()))
        .cloned();
    now.chain(kept).collect()
}

/// Merges `status` into the GitSync's status subresource.
pub async fn patch_status(
    ctx: &Context,
    sync: &GitSync,
    status: Value,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::synced;

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
        assert_eq!(syncing_on(&status).map(|(id, _)| id), Some("one"));
        status.conditions[0].message = "syncing (spec changed) on kubesync-7d9-x on y".into();
        assert_eq!(
            syncing_on(&status).map(|(id, _)| id),
            Some("kubesync-7d9-x on y"),
            "the identity is what follows the reason"
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

    #[test]
    fn a_finished_sync_names_the_failed_step_and_stalls_only_when_git_must_change() {
        let old = synced(Timestamp::now(), None);
        let update = StatusUpdate {
            old: &old,
            generation: Some(1),
        };
        let bad_manifest = crate::manifests::ManifestError::Unreadable {
            file: "apps/web.yaml".into(),
            reason: "permission denied".into(),
        };
        let failed = SyncReport::failed("web", crate::sync::SyncError::from(bad_manifest));
        let status = update.finished(&failed, 0, None, Timestamp::now());
        let conditions: Vec<Condition> =
            serde_json::from_value(status["conditions"].clone()).expect("conditions");
        let by_type = |t: &str| conditions.iter().find(|c| c.type_ == t).expect("condition");
        assert_eq!(by_type("Ready").status, "False");
        assert_eq!(by_type("Ready").reason, "ManifestsInvalid");
        assert_eq!(by_type("Stalled").status, "True");
        assert!(
            status["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("apps/web.yaml"))
        );

        let ok = SyncReport {
            revision: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        let status = update.finished(&ok, 3, None, Timestamp::now());
        assert_eq!(status["lastAppliedRevision"], "0123456789abcdef");
        assert_eq!(status["summary"]["managed"], 3);
        assert_eq!(status["conditions"][0]["reason"], "Succeeded");
        assert_eq!(status["conditions"][2]["status"], "False");
        assert_eq!(status["history"].as_array().map(Vec::len), Some(1));
    }
}
