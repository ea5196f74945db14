//! Prometheus metrics (`prometheus-client`): built once, passed to the controller and the HTTP
//! listener. Labels are only `sync="<namespace>/<name>"` and small fixed enums, so cardinality
//! stays bounded by the number of GitSyncs.
use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::notify::deliver::{Delivery, DeliveryKind, Recorder};
use crate::sync::{Step, SyncReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub sync: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RunResult {
    success,
    failure,
    /// Started and never finished (the process stopped or lost its lease mid-sync); counted by
    /// the replica that finds it.
    interrupted,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub sync: String,
    pub result: RunResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    created,
    configured,
    unchanged,
    recreated,
    adopted,
    failed,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::created,
        Operation::configured,
        Operation::unchanged,
        Operation::recreated,
        Operation::adopted,
        Operation::failed,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub sync: String,
    pub op: Operation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    pub sync: String,
    /// A fixed category (`PruneBlocked::category`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub sync: String,
    /// The step that failed first (`Step::as_str`).
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub sync: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub provider: &'static str,
    pub event: &'static str,
    pub result: Delivery,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitStatusLabels {
    pub forge: &'static str,
    pub state: &'static str,
    pub result: Delivery,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    /// A provider or a forge.
    pub receiver: &'static str,
}

/// Notifications and commit statuses sent (`notify::deliver`).
struct DeliveryMetrics {
    notifications: Family<NotificationLabels, Counter>,
    commit_statuses: Family<CommitStatusLabels, Counter>,
    retries: Family<ReceiverLabels, Counter>,
}

impl DeliveryMetrics {
    fn new(r: &mut Registry) -> DeliveryMetrics {
        DeliveryMetrics {
            notifications: registered(
                r,
                "kubesync_notifications",
                "Notifications, by provider, event and result (sent, failed, dropped)",
            ),
            commit_statuses: registered(
                r,
                "kubesync_commit_statuses",
                "Commit statuses posted to the Git forge, by forge, state and result",
            ),
            retries: registered(
                r,
                "kubesync_notification_retries",
                "Attempts repeated after a receiver failed or did not answer",
            ),
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    deliveries: DeliveryMetrics,
    runs: Family<RunLabels, Counter>,
    failures: Family<StepLabels, Counter>,
    duration: Histograms,
    last_success: Family<SyncLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    managed: Family<SyncLabels, Gauge>,
    operations: Family<OperationLabels, Counter>,
    pruned: Family<SyncLabels, Counter>,
    prune_blocked: Family<BlockedLabels, Counter>,
    drift_corrected: Family<SyncLabels, Counter>,
    unhealthy: Family<SyncLabels, Gauge>,
    policies: PolicyMetrics,
    fetch_duration: Histograms,
    fetch_failures: Family<SyncLabels, Counter>,
    renders: RenderMetrics,
    source_info: Family<SourceLabels, Gauge>,
    suspended: Family<SyncLabels, Gauge>,
    watches: WatchMetrics,
    shards: ShardMetrics,
    commit_to_applied: Histograms,
    /// The revision each sync's `kubesync_source_info` series carries (one series per sync).
    revisions: Mutex<HashMap<String, String>>,
}

type Histograms = Family<SyncLabels, Histogram, fn() -> Histogram>;

/// Kustomize renders.
struct RenderMetrics {
    duration: Histograms,
    failures: Family<SyncLabels, Counter>,
}

impl RenderMetrics {
    fn new(r: &mut Registry) -> RenderMetrics {
        RenderMetrics {
            duration: registered_histogram(
                r,
                "kubesync_render_duration_seconds",
                "Duration of the kustomize builds of a sync (renders from the cache not counted)",
                fetch_histogram,
            ),
            failures: registered(
                r,
                "kubesync_render_failures",
                "Syncs that failed because a kustomization did not render",
            ),
        }
    }
}

/// What the drift and rollback policies did.
struct PolicyMetrics {
    drifted: Family<SyncLabels, Gauge>,
    rollbacks: Family<RunLabels, Counter>,
}

impl PolicyMetrics {
    fn new(r: &mut Registry) -> PolicyMetrics {
        PolicyMetrics {
            drifted: registered(
                r,
                "kubesync_drifted_objects",
                "Objects that differ from Git and were left so (drift: report)",
            ),
            rollbacks: registered(
                r,
                "kubesync_rollbacks",
                "Automatic rollbacks to the last healthy revision, by result",
            ),
        }
    }
}

/// What the controller's watches on managed objects do between syncs.
struct WatchMetrics {
    watched: Family<SyncLabels, Gauge>,
    repairs: Family<SyncLabels, Counter>,
    idle_intervals: Family<SyncLabels, Counter>,
}

impl WatchMetrics {
    fn new(r: &mut Registry) -> WatchMetrics {
        WatchMetrics {
            watched: registered(
                r,
                "kubesync_watched_objects",
                "Objects the controller watches for drift (0: drift waits for the next full sync)",
            ),
            repairs: registered(
                r,
                "kubesync_drift_repairs",
                "Repairs: objects that changed in the cluster re-applied between syncs",
            ),
            idle_intervals: registered(
                r,
                "kubesync_idle_intervals",
                "Intervals that found the revision unchanged and the watches quiet: no sync ran",
            ),
        }
    }
}

/// The shards this replica holds (`--shards`).
struct ShardMetrics {
    owned: Family<ShardLabels, Gauge>,
    acquired: Family<ShardLabels, Counter>,
}

impl ShardMetrics {
    fn new(r: &mut Registry) -> ShardMetrics {
        ShardMetrics {
            owned: registered(
                r,
                "kubesync_shard_owned",
                "1 while this replica holds the shard's Lease and syncs its GitSyncs, else 0",
            ),
            acquired: registered(
                r,
                "kubesync_shard_acquisitions",
                "Times this replica took the shard's Lease (at start, from a dead replica, or handed over)",
            ),
        }
    }
}

/// A new metric, registered.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn registered_histogram(
    registry: &mut Registry,
    name: &str,
    help: &str,
    buckets: fn() -> Histogram,
) -> Histograms {
    let family = Histograms::new_with_constructor(buckets);
    registry.register(name, help, family.clone());
    family
}

fn sync_histogram() -> Histogram {
    Histogram::new(SYNC_BUCKETS.iter().copied())
}
fn fetch_histogram() -> Histogram {
    Histogram::new(FETCH_BUCKETS.iter().copied())
}
fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

const SYNC_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0];
const FETCH_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const LATENCY_BUCKETS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        Metrics {
            runs: registered(&mut r, "kubesync_sync_runs", "Syncs run, by result"),
            failures: registered(
                &mut r,
                "kubesync_sync_failures",
                "Failed syncs, by the step that failed first",
            ),
            duration: registered_histogram(
                &mut r,
                "kubesync_sync_duration_seconds",
                "Duration of a sync, fetch to prune",
                sync_histogram,
            ),
            last_success: registered(
                &mut r,
                "kubesync_last_success_timestamp_seconds",
                "Unix time of the last successful sync",
            ),
            managed: registered(
                &mut r,
                "kubesync_managed_objects",
                "Objects in the sync's ApplySet after its last sync",
            ),
            operations: registered(
                &mut r,
                "kubesync_apply_operations",
                "Objects applied, by outcome",
            ),
            pruned: registered(&mut r, "kubesync_pruned_objects", "Objects pruned"),
            prune_blocked: registered(
                &mut r,
                "kubesync_prune_blocked",
                "Syncs whose prune a guard stopped, by reason",
            ),
            drift_corrected: registered(
                &mut r,
                "kubesync_drift_corrected",
                "Objects whose live state differed from Git and were corrected",
            ),
            unhealthy: registered(
                &mut r,
                "kubesync_unhealthy_objects",
                "Applied objects not healthy after the last sync",
            ),
            policies: PolicyMetrics::new(&mut r),
            fetch_duration: registered_histogram(
                &mut r,
                "kubesync_git_fetch_duration_seconds",
                "Duration of the Git fetch (ls-remote included)",
                fetch_histogram,
            ),
            fetch_failures: registered(&mut r, "kubesync_git_fetch_failures", "Failed Git fetches"),
            renders: RenderMetrics::new(&mut r),
            source_info: registered(
                &mut r,
                "kubesync_source_info",
                "The revision last synced (value 1; one series per sync)",
            ),
            suspended: registered(
                &mut r,
                "kubesync_suspended",
                "1 when the GitSync is suspended",
            ),
            watches: WatchMetrics::new(&mut r),
            shards: ShardMetrics::new(&mut r),
            commit_to_applied: registered_histogram(
                &mut r,
                "kubesync_commit_to_applied_seconds",
                "From the commit's committer time to the end of the sync that first applied it",
                latency_histogram,
            ),
            deliveries: DeliveryMetrics::new(&mut r),
            revisions: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// Records one finished sync. `first_apply_of_revision`: whether this sync applied a revision
    /// for the first time (only then is commit → applied latency observed).
    pub fn record_sync(
        &self,
        sync: &str,
        report: &SyncReport,
        managed: i64,
        first_apply_of_revision: bool,
    ) {
        let labels = SyncLabels { sync: sync.into() };
        let result = match report.failure {
            None => RunResult::success,
            Some(step) => {
                let step = step.as_str();
                self.failures
                    .get_or_create(&StepLabels {
                        sync: sync.into(),
                        step,
                    })
                    .inc();
                RunResult::failure
            }
        };
        self.runs
            .get_or_create(&RunLabels {
                sync: sync.into(),
                result,
            })
            .inc();
        self.duration
            .get_or_create(&labels)
            .observe(report.duration_seconds);
        if let Some(fetch) = report.fetch_duration {
            self.fetch_duration
                .get_or_create(&labels)
                .observe(fetch.as_secs_f64());
        }
        if let Some(render) = report.render_duration {
            self.renders
                .duration
                .get_or_create(&labels)
                .observe(render.as_secs_f64());
        }
        if report.failure == Some(Step::Render) {
            self.renders.failures.get_or_create(&labels).inc();
        }
        if report.failure == Some(Step::Source) {
            self.fetch_failures.get_or_create(&labels).inc();
        } else {
            self.unhealthy
                .get_or_create(&labels)
                .set(report.summary.unhealthy as i64);
        }
        self.record_change_set(sync, report);
        if report.succeeded() {
            self.record_success(sync, report, managed, first_apply_of_revision);
        }
    }

    /// The counts of the change set, and why a prune did not run.
    fn record_change_set(&self, sync: &str, report: &SyncReport) {
        let labels = SyncLabels { sync: sync.into() };
        let s = &report.summary;
        for (op, count) in [
            (Operation::created, s.created),
            (Operation::configured, s.configured),
            (Operation::unchanged, s.unchanged),
            (Operation::recreated, s.recreated),
            (Operation::adopted, s.adopted),
            (Operation::failed, s.failed),
        ] {
            let counter = self.operations.get_or_create(&OperationLabels {
                sync: sync.into(),
                op,
            });
            counter.inc_by(count as u64);
        }
        self.pruned.get_or_create(&labels).inc_by(s.pruned as u64);
        if let Some(blocked) = &report.prune_blocked {
            self.prune_blocked
                .get_or_create(&BlockedLabels {
                    sync: sync.into(),
                    reason: blocked.category(),
                })
                .inc();
        }
        self.drift_corrected
            .get_or_create(&labels)
            .inc_by(s.drift_corrected as u64);
    }

    fn record_success(&self, sync: &str, report: &SyncReport, managed: i64, first_apply: bool) {
        let labels = SyncLabels { sync: sync.into() };
        self.managed.get_or_create(&labels).set(managed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_success.get_or_create(&labels).set(now);
        let Some(revision) = &report.revision else {
            return;
        };
        self.set_revision(sync, revision);
        if first_apply && let Some(commit_time) = report.commit_time {
            let latency = now - commit_time as f64;
            if latency >= 0.0 {
                self.commit_to_applied
                    .get_or_create(&labels)
                    .observe(latency);
            }
        }
    }

    fn set_revision(&self, sync: &str, revision: &str) {
        let mut revisions = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = revisions.insert(sync.into(), revision.into())
            && old != revision
        {
            self.source_info.remove(&SourceLabels {
                sync: sync.into(),
                revision: old,
            });
        }
        self.source_info
            .get_or_create(&SourceLabels {
                sync: sync.into(),
                revision: revision.into(),
            })
            .set(1);
    }

    /// A sync that another process (or an earlier run of this one) started and never finished.
    pub fn record_interrupted(&self, sync: &str) {
        self.runs
            .get_or_create(&RunLabels {
                sync: sync.into(),
                result: RunResult::interrupted,
            })
            .inc();
    }

    /// Objects left drifted (`drift: report`), after a sync or a repair.
    pub fn set_drifted(&self, sync: &str, count: usize) {
        self.policies
            .drifted
            .get_or_create(&SyncLabels { sync: sync.into() })
            .set(count as i64);
    }

    /// The unhealthy count, re-read between syncs.
    pub fn set_unhealthy(&self, sync: &str, count: usize) {
        self.unhealthy
            .get_or_create(&SyncLabels { sync: sync.into() })
            .set(count as i64);
    }

    /// A repair between syncs: the objects it wrote count as drift corrected.
    pub fn record_repair(&self, sync: &str, report: &SyncReport) {
        let labels = SyncLabels { sync: sync.into() };
        self.watches.repairs.get_or_create(&labels).inc();
        let s = &report.summary;
        let written = s.created + s.configured + s.recreated;
        self.drift_corrected
            .get_or_create(&labels)
            .inc_by(written as u64);
    }

    /// An automatic rollback, applied or failed.
    pub fn record_rollback(&self, sync: &str, succeeded: bool) {
        let result = match succeeded {
            true => RunResult::success,
            false => RunResult::failure,
        };
        self.policies
            .rollbacks
            .get_or_create(&RunLabels {
                sync: sync.into(),
                result,
            })
            .inc();
    }

    pub fn record_idle_interval(&self, sync: &str) {
        let labels = SyncLabels { sync: sync.into() };
        self.watches.idle_intervals.get_or_create(&labels).inc();
    }

    pub fn set_watched(&self, sync: &str, objects: usize) {
        self.watches
            .watched
            .get_or_create(&SyncLabels { sync: sync.into() })
            .set(objects as i64);
    }

    /// This replica took (`true`) or gave up (`false`) a shard.
    pub fn set_shard_owned(&self, shard: u32, owned: bool) {
        let labels = ShardLabels {
            shard: shard.to_string(),
        };
        self.shards
            .owned
            .get_or_create(&labels)
            .set(i64::from(owned));
        if owned {
            self.shards.acquired.get_or_create(&labels).inc();
        }
    }

    pub fn set_suspended(&self, sync: &str, suspended: bool) {
        self.suspended
            .get_or_create(&SyncLabels { sync: sync.into() })
            .set(i64::from(suspended));
    }

    /// Drops every series of a deleted GitSync, counters and histograms included.
    pub fn forget(&self, sync: &str) {
        let labels = SyncLabels { sync: sync.into() };
        for family in [
            &self.managed,
            &self.unhealthy,
            &self.policies.drifted,
            &self.suspended,
            &self.watches.watched,
        ] {
            family.remove(&labels);
        }
        for family in [
            &self.pruned,
            &self.drift_corrected,
            &self.fetch_failures,
            &self.renders.failures,
            &self.watches.repairs,
            &self.watches.idle_intervals,
        ] {
            family.remove(&labels);
        }
        for family in [
            &self.duration,
            &self.fetch_duration,
            &self.renders.duration,
            &self.commit_to_applied,
        ] {
            family.remove(&labels);
        }
        self.last_success.remove(&labels);
        for result in [
            RunResult::success,
            RunResult::failure,
            RunResult::interrupted,
        ] {
            let labels = RunLabels {
                sync: sync.into(),
                result,
            };
            self.runs.remove(&labels);
            self.policies.rollbacks.remove(&labels);
        }
        for op in Operation::ALL {
            self.operations.remove(&OperationLabels {
                sync: sync.into(),
                op,
            });
        }
        for step in Step::ALL {
            self.failures.remove(&StepLabels {
                sync: sync.into(),
                step: step.as_str(),
            });
        }
        for reason in crate::sync::PruneBlocked::CATEGORIES {
            self.prune_blocked.remove(&BlockedLabels {
                sync: sync.into(),
                reason,
            });
        }
        if let Some(revision) = self
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sync)
        {
            self.source_info.remove(&SourceLabels {
                sync: sync.into(),
                revision,
            });
        }
    }

    /// The exposition text for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Recorder for Metrics {
    /// A notification or commit status delivered, given up on, or dropped.
    fn delivery(&self, kind: DeliveryKind, result: Delivery) {
        let d = &self.deliveries;
        match kind {
            DeliveryKind::Notification { provider, event } => (d.notifications)
                .get_or_create(&NotificationLabels {
                    provider,
                    event,
                    result,
                })
                .inc(),
            DeliveryKind::CommitStatus { forge, state } => (d.commit_statuses)
                .get_or_create(&CommitStatusLabels {
                    forge,
                    state,
                    result,
                })
                .inc(),
        };
    }

    fn retry(&self, kind: DeliveryKind) {
        let receiver = match kind {
            DeliveryKind::Notification { provider, .. } => provider,
            DeliveryKind::CommitStatus { forge, .. } => forge,
        };
        (self.deliveries.retries)
            .get_or_create(&ReceiverLabels { receiver })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Summary;

    #[test]
    fn a_sync_shows_up_with_bounded_labels() {
        let metrics = Metrics::new();
        let report = |revision: &str| SyncReport {
            revision: Some(revision.into()),
            summary: Summary {
                created: 2,
                unchanged: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        metrics.record_sync("apps/web", &report("abc123"), 5, true);
        metrics.record_sync("apps/web", &report("def456"), 5, true);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kubesync_sync_runs_total{sync="apps/web",result="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubesync_apply_operations_total{sync="apps/web",op="created"} 4"#)
        );
        assert!(text.contains(r#"kubesync_managed_objects{sync="apps/web"} 5"#));
        // One source_info series per sync: the old revision's series is gone.
        assert!(text.contains(r#"kubesync_source_info{sync="apps/web",revision="def456"} 1"#));
        assert!(!text.contains("abc123"), "{text}");
        metrics.forget("apps/web");
        let forgotten = metrics.encode();
        assert!(
            !forgotten.contains("apps/web"),
            "no series of a deleted GitSync is left: {forgotten}"
        );
    }

    #[test]
    fn a_failed_fetch_counts_as_failure_and_keeps_the_last_success() {
        let metrics = Metrics::new();
        let fetch_failed = crate::source::SourceError::Timeout {
            url: "https://example.org/r.git".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        let report = SyncReport::failed("web", crate::sync::SyncError::from(fetch_failed));
        metrics.record_sync("apps/web", &report, 0, false);
        let text = metrics.encode();
        assert!(text.contains(r#"kubesync_sync_runs_total{sync="apps/web",result="failure"} 1"#));
        assert!(text.contains(r#"kubesync_git_fetch_failures_total{sync="apps/web"} 1"#));
        assert!(
            text.contains(r#"kubesync_prune_blocked_total{sync="apps/web",reason="failure"} 1"#),
            "{text}"
        );
        assert!(!text.contains("kubesync_last_success_timestamp_seconds{"));
        assert!(
            text.contains(r#"kubesync_sync_failures_total{sync="apps/web",step="source"} 1"#),
            "{text}"
        );
    }
}
