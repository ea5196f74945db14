//! The change set of a sync: one [`Action`] per object, whether the apply stage or the prune stage
//! decided it, in one vocabulary that the CLI, the GitSync status, Events and metrics all read.
use kube::discovery::ApiResource;

use crate::drift::Fingerprint;
use crate::health::Health;
use crate::manifests::Origin;
use crate::plan::ObjectKey;

/// What a sync did (or, in a dry run, would do) to one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "reason")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    /// Deleted and created again (`kubesync.dev/recreate`) because an immutable field changed.
    Recreated,
    /// Taken over from another ApplySet (`kubesync.dev/adopt`).
    Adopted,
    /// Deleted because it left Git.
    Pruned,
    /// Left Git, left in the cluster and released from the set (protected kind or annotation).
    Kept(String),
    /// Left alone: not provably ours, or already gone, or a Job that already ran.
    Skipped(String),
    /// Changed in the cluster and left so (`drift: report`): the fields that differ from Git.
    Drifted(String),
    Failed(String),
}

impl Action {
    /// The object was (or, in a dry run, would be) written by an apply.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Action::Created | Action::Configured | Action::Recreated | Action::Adopted
        )
    }

    /// The object is in the cluster as Git has it after this action.
    pub fn applied(&self) -> bool {
        self.writes() || *self == Action::Unchanged
    }

    /// The cluster changed (or would change) because of this action.
    pub fn changes_cluster(&self) -> bool {
        self.writes() || *self == Action::Pruned
    }

    /// The object is in the cluster and in the set after this action (as Git has it or not).
    pub fn in_set(&self) -> bool {
        self.applied() || matches!(self, Action::Drifted(_))
    }
}

/// One object's line in the change set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectReport {
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub result: Action,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drift_corrected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The object's metadata after the sync (applied objects only), for drift detection.
    #[serde(skip)]
    pub fingerprint: Option<Fingerprint>,
    /// Where to read the object again (applied objects only), for health checks between syncs.
    #[serde(skip)]
    pub target: Option<(ObjectKey, ApiResource)>,
}

/// Counts of the change set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub managed: usize,
    pub created: usize,
    pub configured: usize,
    pub unchanged: usize,
    pub recreated: usize,
    pub adopted: usize,
    pub pruned: usize,
    pub kept: usize,
    pub failed: usize,
    /// Changed in the cluster and left so (`drift: report`).
    pub drifted: usize,
    pub drift_corrected: usize,
    pub unhealthy: usize,
}

impl Summary {
    pub fn of(objects: &[ObjectReport]) -> Summary {
        let mut s = Summary::default();
        for o in objects {
            let count = match &o.result {
                Action::Created => &mut s.created,
                Action::Configured => &mut s.configured,
                Action::Unchanged => &mut s.unchanged,
                Action::Recreated => &mut s.recreated,
                Action::Adopted => &mut s.adopted,
                Action::Pruned => &mut s.pruned,
                Action::Kept(_) => &mut s.kept,
                Action::Failed(_) => &mut s.failed,
                Action::Drifted(_) => &mut s.drifted,
                Action::Skipped(_) => continue,
            };
            *count += 1;
        }
        for o in objects {
            s.managed += usize::from(o.result.in_set());
            s.drift_corrected += usize::from(o.drift_corrected);
            s.unhealthy += usize::from(o.health.as_ref().is_some_and(|h| !h.is_healthy()));
        }
        s
    }

    /// Objects the sync wrote or deleted.
    pub fn changed(&self) -> usize {
        self.created + self.configured + self.recreated + self.adopted + self.pruned
    }
}

/// One object's state before and after (None: absent), for `kubesync diff`.
#[derive(Clone, Debug)]
pub struct Change {
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(result: Action, drift_corrected: bool, health: Option<Health>) -> ObjectReport {
        ObjectReport {
            object: "x".into(),
            origin: None,
            result,
            drift_corrected,
            health,
            fingerprint: None,
            target: None,
        }
    }

    #[test]
    fn the_summary_counts_each_action_once_and_managed_is_what_git_holds_in_the_cluster() {
        let objects = vec![
            line(Action::Created, false, Some(Health::Healthy)),
            line(
                Action::Configured,
                true,
                Some(Health::Progressing("1/2".into())),
            ),
            line(Action::Unchanged, false, None),
            line(Action::Recreated, false, None),
            line(Action::Adopted, false, None),
            line(Action::Pruned, false, None),
            line(Action::Kept("pvc".into()), false, None),
            line(Action::Skipped("foreign".into()), false, None),
            line(Action::Failed("denied".into()), false, None),
            line(Action::Drifted("spec.replicas".into()), false, None),
        ];
        let s = Summary::of(&objects);
        assert_eq!(
            s,
            Summary {
                managed: 6,
                created: 1,
                configured: 1,
                unchanged: 1,
                recreated: 1,
                adopted: 1,
                pruned: 1,
                kept: 1,
                failed: 1,
                drifted: 1,
                drift_corrected: 1,
                unhealthy: 1,
            }
        );
        assert_eq!(s.changed(), 5);
        assert!(Action::Pruned.changes_cluster() && !Action::Pruned.writes());
        assert!(!Action::Unchanged.changes_cluster() && Action::Unchanged.applied());
    }
}
