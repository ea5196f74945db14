//! Why a sync failed: one [`SyncError`] per problem, each naming the [`Step`] it happened in.
//! The step is a fixed value: metric label, status condition reason and Event reason.
use std::time::Duration;

use crate::applyset::ApplySetError;
use crate::crd::SpecError;
use crate::kustomize::RenderError;
use crate::manifests::ManifestError;
use crate::plan::{DiscoveryError, PlanError};
use crate::source::SourceError;

/// The step of a sync a failure happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// The GitSync's spec (controller only).
    Spec,
    /// The GitSync's Secret or ServiceAccount (controller only).
    Credentials,
    /// Fetching the repository.
    Source,
    /// Rendering kustomizations and Helm charts.
    Render,
    /// Reading and validating the manifests.
    Manifests,
    /// Reading the cluster's API surface.
    Discovery,
    /// Resolving every object against the API.
    Plan,
    /// Reading or writing the ApplySet parent.
    ApplySet,
    /// Applying objects.
    Apply,
    /// Waiting for applied objects to become healthy.
    Health,
    /// Deleting what left Git.
    Prune,
    /// The process was shutting down before apply.
    Stopped,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Spec,
        Step::Credentials,
        Step::Source,
        Step::Render,
        Step::Manifests,
        Step::Discovery,
        Step::Plan,
        Step::ApplySet,
        Step::Apply,
        Step::Health,
        Step::Prune,
        Step::Stopped,
    ];

    /// The metric label value (and the JSON report's `failure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Spec => "spec",
            Step::Credentials => "credentials",
            Step::Source => "source",
            Step::Render => "render",
            Step::Manifests => "manifests",
            Step::Discovery => "discovery",
            Step::Plan => "plan",
            Step::ApplySet => "applyset",
            Step::Apply => "apply",
            Step::Health => "health",
            Step::Prune => "prune",
            Step::Stopped => "stopped",
        }
    }

    /// The reason of the GitSync's conditions and of the Warning Event when a sync fails here.
    pub fn reason(self) -> &'static str {
        match self {
            Step::Spec => "InvalidSpec",
            Step::Credentials => "CredentialsFailed",
            Step::Source => "FetchFailed",
            Step::Render => "RenderFailed",
            Step::Manifests => "ManifestsInvalid",
            Step::Discovery => "DiscoveryFailed",
            Step::Plan => "PlanFailed",
            Step::ApplySet => "ApplySetFailed",
            Step::Apply => "ApplyFailed",
            Step::Health => "HealthCheckFailed",
            Step::Prune => "PruneFailed",
            Step::Stopped => "Stopped",
        }
    }

    /// Only a change in Git or in the spec can help (kstatus `Stalled`); retrying cannot.
    pub fn stalls(self) -> bool {
        matches!(
            self,
            Step::Spec | Step::Render | Step::Manifests | Step::Plan
        )
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Spec(#[source] Box<SpecError>),
    #[error("{0}")]
    Credentials(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("fetch failed: {0}")]
    Fetch(#[source] Box<SourceError>),
    #[error("{0}")]
    Render(#[source] Box<RenderError>),
    /// Every kustomization that failed: recorded as one [`SyncError::Render`] each.
    #[error("{} render error(s)", .0.len())]
    Renders(Vec<RenderError>),
    #[error("{0}")]
    Helm(#[source] Box<crate::helm::HelmError>),
    #[error("{0}")]
    Manifest(#[source] Box<ManifestError>),
    /// Every bad manifest: recorded as one [`SyncError::Manifest`] each.
    #[error("{} manifest error(s)", .0.len())]
    Manifests(Vec<ManifestError>),
    #[error("{0}")]
    Discovery(#[source] Box<DiscoveryError>),
    #[error("{0}")]
    Plan(#[source] Box<PlanError>),
    /// Every object the plan could not resolve: recorded as one [`SyncError::Plan`] each.
    #[error("{} plan error(s)", .0.len())]
    Plans(Vec<PlanError>),
    /// A bad `kubesync.dev/ignore-fields` annotation: file, object and pointer.
    #[error("{0}")]
    IgnoreFields(String),
    #[error("{0}")]
    ApplySet(#[source] Box<ApplySetError>),
    #[error("namespace {0} does not exist: create it, or add a Namespace object for it to Git")]
    MissingNamespace(String),
    #[error("{crd}: not Established within {timeout:?}")]
    CrdNotEstablished { crd: String, timeout: Duration },
    #[error("apply failed for some objects; first: {first}")]
    Apply { first: String },
    #[error(
        "revision {revision} no longer holds {objects}: its checkout changed since it was synced"
    )]
    RepairTargetsGone { revision: String, objects: String },
    #[error("not healthy in time: {objects}")]
    Unhealthy { objects: String },
    #[error("pruning {object}: {reason}")]
    Prune { object: String, reason: String },
    #[error("stopped before apply (shutting down)")]
    Stopped,
}

impl SyncError {
    pub fn step(&self) -> Step {
        match self {
            SyncError::Spec(_) => Step::Spec,
            SyncError::Credentials(_) => Step::Credentials,
            SyncError::Fetch(_) => Step::Source,
            SyncError::Render(_) | SyncError::Renders(_) | SyncError::Helm(_) => Step::Render,
            SyncError::Manifest(_)
            | SyncError::Manifests(_)
            | SyncError::RepairTargetsGone { .. } => Step::Manifests,
            SyncError::Discovery(_) => Step::Discovery,
            SyncError::Plan(_) | SyncError::Plans(_) | SyncError::IgnoreFields(_) => Step::Plan,
            SyncError::ApplySet(_) | SyncError::MissingNamespace(_) => Step::ApplySet,
            SyncError::CrdNotEstablished { .. } | SyncError::Apply { .. } => Step::Apply,
            SyncError::Unhealthy { .. } => Step::Health,
            SyncError::Prune { .. } => Step::Prune,
            SyncError::Stopped => Step::Stopped,
        }
    }

    /// One error per problem: lists are split into their items.
    pub fn split(self) -> Vec<SyncError> {
        match self {
            SyncError::Manifests(list) => (list.into_iter())
                .map(|e| SyncError::Manifest(Box::new(e)))
                .collect(),
            SyncError::Renders(list) => (list.into_iter())
                .map(|e| SyncError::Render(Box::new(e)))
                .collect(),
            SyncError::Plans(list) => (list.into_iter())
                .map(|e| SyncError::Plan(Box::new(e)))
                .collect(),
            one => vec![one],
        }
    }
}

/// Each step's error, boxed: a sync's errors stay small to move around.
macro_rules! from_step_error {
    ($($variant:ident($error:ty)),* $(,)?) => {$(
        impl From<$error> for SyncError {
            fn from(e: $error) -> SyncError {
                SyncError::$variant(Box::new(e))
            }
        }
    )*};
}

from_step_error!(
    Spec(SpecError),
    Fetch(SourceError),
    Render(RenderError),
    Helm(crate::helm::HelmError),
    Manifest(ManifestError),
    Discovery(DiscoveryError),
    Plan(PlanError),
    ApplySet(ApplySetError),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_a_distinct_label_and_reason() {
        let labels: std::collections::BTreeSet<_> = Step::ALL.iter().map(|s| s.as_str()).collect();
        let reasons: std::collections::BTreeSet<_> = Step::ALL.iter().map(|s| s.reason()).collect();
        assert_eq!(labels.len(), Step::ALL.len());
        assert_eq!(reasons.len(), Step::ALL.len());
        for step in Step::ALL {
            assert_eq!(
                serde_json::to_value(step).expect("json"),
                serde_json::json!(step.as_str())
            );
        }
        assert_eq!(SyncError::Stopped.step(), Step::Stopped);
        assert!(Step::Manifests.stalls() && !Step::Source.stalls());
    }
}
