//! The kinds of notification, as GitSyncs name them.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a notification is about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// A sync failed (fetch, render, plan, apply, …).
    Failed,
    /// A sync succeeded after a problem that was notified.
    Recovered,
    /// A sync changed the cluster: created, configured or pruned objects.
    Applied,
    /// A prune guard stopped the prune (too many deletions, …).
    PruneBlocked,
    /// Objects changed in the cluster were put back as Git says.
    DriftCorrected,
    /// Applied objects are not healthy (rollout stuck, Job failed, …).
    Unhealthy,
    /// The GitSync cannot go on without a change: invalid spec, render failure.
    Stalled,
    /// An unhealthy revision was rolled back to the last healthy one.
    RolledBack,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Failed,
        EventKind::Recovered,
        EventKind::Applied,
        EventKind::PruneBlocked,
        EventKind::DriftCorrected,
        EventKind::Unhealthy,
        EventKind::Stalled,
        EventKind::RolledBack,
    ];

    /// What a receiver gets when it names no events: problems and their end, not every change.
    pub const DEFAULT: [EventKind; 6] = [
        EventKind::Failed,
        EventKind::Recovered,
        EventKind::PruneBlocked,
        EventKind::Unhealthy,
        EventKind::Stalled,
        EventKind::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failed => "failed",
            EventKind::Recovered => "recovered",
            EventKind::Applied => "applied",
            EventKind::PruneBlocked => "pruneBlocked",
            EventKind::DriftCorrected => "driftCorrected",
            EventKind::Unhealthy => "unhealthy",
            EventKind::Stalled => "stalled",
            EventKind::RolledBack => "rolledBack",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.as_str() == name)
    }

    pub fn severity(self) -> Severity {
        match self {
            EventKind::Failed | EventKind::Stalled | EventKind::RolledBack => Severity::Error,
            EventKind::PruneBlocked | EventKind::Unhealthy => Severity::Warning,
            EventKind::Recovered | EventKind::Applied | EventKind::DriftCorrected => Severity::Info,
        }
    }

    /// Words for a title: "sync failed", "recovered", …
    pub fn headline(self) -> &'static str {
        match self {
            EventKind::Failed => "sync failed",
            EventKind::Recovered => "recovered",
            EventKind::Applied => "applied",
            EventKind::PruneBlocked => "prune blocked",
            EventKind::DriftCorrected => "drift corrected",
            EventKind::Unhealthy => "unhealthy",
            EventKind::Stalled => "stalled",
            EventKind::RolledBack => "rolled back",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}
