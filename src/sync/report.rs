//! Everything a sync did: the change set, the errors, and why a prune did not run. The CLI prints
//! it; the controller turns it into status, Events and metrics.
use std::time::Duration;

use serde::Serializer;

use super::error::{Step, SyncError};
use crate::apply::{ApplyOutcome, comparable};
use crate::applyset::Inventory;
use crate::outcome::{Action, Change, ObjectReport, Summary};
use crate::prune::{PruneBlocked, PruneOutcome};

#[derive(Debug, Default, serde::Serialize)]
pub struct SyncReport {
    pub name: String,
    pub revision: Option<String>,
    #[serde(skip)]
    pub commit_time: Option<i64>,
    /// The commit's subject and author.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<crate::source::CommitInfo>,
    pub fetched: bool,
    /// Where the revision's files are (the controller repairs drift from them).
    #[serde(skip)]
    pub checkout_dir: Option<std::path::PathBuf>,
    pub dry_run: bool,
    /// The change set: one line per object applied or considered for prune.
    pub objects: Vec<ObjectReport>,
    /// Every failure, in the order it happened.
    #[serde(serialize_with = "messages")]
    pub errors: Vec<SyncError>,
    /// Objects not applied because their kind's CRD is not served yet (`wait_for_crds`): one
    /// line each, naming file, document and object. Nothing is pruned while any wait.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_crd: Vec<String>,
    /// Problems that did not stop the sync.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub prune_blocked: Option<PruneBlocked>,
    /// Deletes were sent: every step before prune succeeded. A failure after this point (a
    /// delete, or narrowing the parent) does not make the prune "blocked": it ran, in part.
    #[serde(skip)]
    pub prune_started: bool,
    /// Fields left to other controllers (autoscalers, `kubesync.dev/ignore-fields`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<crate::release::Released>,
    pub summary: Summary,
    pub duration_seconds: f64,
    #[serde(skip)]
    pub fetch_duration: Option<Duration>,
    #[serde(skip)]
    /// Time spent in `kustomize build` (renders from the cache not counted); None: nothing
    /// was rendered.
    pub render_duration: Option<Duration>,
    /// The Helm chart rendered from a repository: its resolved version and digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartVersion>,
    /// The step of the first failure.
    pub failure: Option<Step>,
    /// The sync waited for the applied objects' health (so a success means healthy).
    #[serde(skip)]
    pub health_checked: bool,
    /// Dry runs only: (object, before, after) for every object that would change.
    #[serde(skip)]
    pub changes: Vec<Change>,
}

fn messages<S: Serializer>(errors: &[SyncError], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(errors.iter().map(ToString::to_string))
}

impl SyncReport {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// Every error as one line of text.
    pub fn error_messages(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }

    /// Records a failure (a list of problems as one error each).
    pub fn fail(&mut self, error: SyncError) {
        self.failure.get_or_insert(error.step());
        self.errors.extend(error.split());
    }

    /// A report of a sync that failed before it could start (controller: spec, credentials).
    pub fn failed(name: &str, error: SyncError) -> SyncReport {
        let mut report = SyncReport {
            name: name.into(),
            prune_blocked: Some(PruneBlocked::Failure),
            ..Default::default()
        };
        report.fail(error);
        report
    }

    /// The first problem, for a status line or an Event: an error of the sync, else the first
    /// object that failed.
    pub fn first_problem(&self) -> Option<String> {
        self.errors.first().map(ToString::to_string).or_else(|| {
            self.objects.iter().find_map(|o| match &o.result {
                Action::Failed(r) => Some(format!("{}: {r}", o.object)),
                _ => None,
            })
        })
    }

    /// One line per applied object, and in a dry run the changes it would make. A failed
    /// object's reason starts with the file it came from.
    pub fn record_applied(&mut self, outcomes: &[ApplyOutcome]) {
        for o in outcomes {
            if self.dry_run && o.action.writes() {
                self.changes.push(Change {
                    object: o.key.to_string(),
                    before: o.before.as_ref().map(comparable),
                    after: o.live.as_ref().map(comparable),
                });
            }
            let result = match &o.action {
                Action::Failed(r) => Action::Failed(format!("{}: {r}", o.origin)),
                other => other.clone(),
            };
            self.objects.push(ObjectReport {
                object: o.key.to_string(),
                origin: Some(o.origin.clone()),
                result,
                drift_corrected: o.drift_corrected,
                health: o.health.clone(),
                fingerprint: o.fingerprint,
                target: Some((o.key.clone(), o.resource.clone())),
            });
        }
    }

    /// Fails the sync when an applied object is not healthy (after a wait).
    pub fn require_health(&mut self) {
        let unhealthy: Vec<String> = self
            .objects
            .iter()
            .filter_map(|o| match &o.health {
                Some(h) if !h.is_healthy() => Some(format!("{} ({h})", o.object)),
                _ => None,
            })
            .collect();
        if !unhealthy.is_empty() {
            self.fail(SyncError::Unhealthy {
                objects: unhealthy.join(", "),
            });
        }
    }

    /// One line per prune candidate; a failed delete fails the sync. In a dry run, each
    /// deletion is a change.
    pub fn record_pruned(&mut self, pruned: &[PruneOutcome], inventory: &Inventory) {
        for p in pruned {
            if self.dry_run && p.action == Action::Pruned {
                let before = inventory.objects.get(&p.key).map(|l| comparable(&l.object));
                self.changes.push(Change {
                    object: p.key.to_string(),
                    before,
                    after: None,
                });
            }
            if let Action::Failed(reason) = &p.action {
                self.fail(SyncError::Prune {
                    object: p.key.to_string(),
                    reason: reason.clone(),
                });
            }
            self.objects.push(ObjectReport {
                object: p.key.to_string(),
                origin: None,
                result: p.action.clone(),
                drift_corrected: false,
                health: None,
                fingerprint: None,
                target: None,
            });
        }
    }

    /// Counts the change set.
    pub fn summarise(&mut self) {
        self.summary = Summary::of(&self.objects);
    }
}

/// Which version of a repository's chart was rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChartVersion {
    pub version: String,
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::sync::testing::outcome;

    #[test]
    fn applied_objects_are_reported_and_unhealthy_ones_fail_a_wait() {
        let outcomes = [
            outcome("ConfigMap", "a", Action::Created, Health::Healthy),
            outcome(
                "ConfigMap",
                "b",
                Action::Recreated,
                Health::Progressing("0 of 1 replicas ready".into()),
            ),
            outcome(
                "ConfigMap",
                "c",
                Action::Unchanged,
                Health::Suspended("rollout paused".into()),
            ),
        ];
        let mut report = SyncReport::default();
        report.record_applied(&outcomes);
        assert!(report.succeeded(), "no wait: health does not fail the sync");
        report.summarise();
        let s = &report.summary;
        assert_eq!(
            (s.created, s.recreated, s.unchanged, s.managed, s.unhealthy),
            (1, 1, 1, 3, 1)
        );

        let mut report = SyncReport::default();
        report.record_applied(&outcomes);
        report.require_health();
        assert_eq!(report.failure, Some(Step::Health));
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            ["not healthy in time: configmap/b -n apps (progressing: 0 of 1 replicas ready)"]
        );
    }

    #[test]
    fn a_failure_keeps_the_first_step_and_lists_split_into_one_error_each() {
        let mut report = SyncReport::default();
        report.fail(SyncError::Stopped);
        report.fail(SyncError::Apply { first: "x".into() });
        assert_eq!(report.failure, Some(Step::Stopped));
        assert_eq!(report.errors.len(), 2);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["failure"], "stopped");
        assert_eq!(json["errors"][0], "stopped before apply (shutting down)");
        assert_eq!(
            report.first_problem().as_deref(),
            Some("stopped before apply (shutting down)")
        );
    }

    #[test]
    fn a_dry_run_reports_what_it_would_write() {
        let mut namespace = outcome("Namespace", "fresh", Action::Created, Health::Healthy);
        namespace.key.namespace = None;
        let outcomes = [
            namespace,
            outcome("ConfigMap", "same", Action::Unchanged, Health::Healthy),
            outcome("ConfigMap", "new", Action::Created, Health::Healthy),
        ];
        let mut report = SyncReport {
            dry_run: true,
            ..Default::default()
        };
        report.record_applied(&outcomes);
        let changed: Vec<&str> = report.changes.iter().map(|c| c.object.as_str()).collect();
        assert_eq!(changed, ["namespace/fresh", "configmap/new -n apps"]);
    }
}
