//! `spec.dependsOn`: a GitSync syncs only once every GitSync it names is Ready with its last
//! attempted revision applied. Until then it shows `Ready=False, reason=DependencyNotReady`
//! naming the one it waits for, and looks again every few seconds (a GET per dependency), so it
//! resumes without waiting for its interval. A cycle (`a` waits for `b`, which waits for `a`)
//! can never resolve: it is reported as `DependencyCycle` and stalls until a spec changes.
use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use tracing::info;

use super::context::{Context, ControllerError, key_of};
use super::status::{StatusUpdate, patch_status, reason};
use crate::crd::{DependencyRef, GitSync};

/// How often a waiting GitSync looks at its dependencies again.
pub const RECHECK: Duration = Duration::from_secs(3);
/// How far a cycle is looked for.
const MAX_DEPTH: usize = 32;

/// Why a GitSync cannot sync yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Waiting {
    /// `namespace/name` and why it is not ready.
    NotReady(String, String),
    /// The GitSyncs of the cycle, in order, back to the first.
    Cycle(Vec<String>),
}

fn key_of_ref(dependency: &DependencyRef, own_namespace: &str) -> (String, String) {
    let namespace = dependency.namespace.clone().unwrap_or(own_namespace.into());
    (namespace, dependency.name.clone())
}

/// Why `dependency` is not ready, or None when it is.
pub fn not_ready(dependency: Option<&GitSync>) -> Option<String> {
    let Some(d) = dependency else {
        return Some("not found".into());
    };
    let Some(status) = d.status.as_ref() else {
        return Some("not synced yet".into());
    };
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => {}
        Some(c) => return Some(format!("{}: {}", c.reason, c.message)),
        None => return Some("not synced yet".into()),
    }
    if status.observed_generation != d.metadata.generation {
        return Some("its spec changed since its last sync".into());
    }
    if status.last_applied_revision != status.last_attempted_revision {
        return Some("its last attempted revision is not applied".into());
    }
    None
}

/// What `sync` waits for, reading its dependencies (and theirs, for a cycle) from the API.
pub async fn waiting(ctx: &Context, sync: &GitSync) -> Result<Option<Waiting>, kube::Error> {
    let own = sync.namespace().unwrap_or_default();
    for dependency in &sync.spec.depends_on {
        let (namespace, name) = key_of_ref(dependency, &own);
        let api: Api<GitSync> = Api::namespaced(ctx.client.clone(), &namespace);
        let found = api.get_opt(&name).await?;
        if let Some(why) = not_ready(found.as_ref()) {
            if let Some(cycle) = cycle(ctx, sync).await? {
                return Ok(Some(Waiting::Cycle(cycle)));
            }
            return Ok(Some(Waiting::NotReady(format!("{namespace}/{name}"), why)));
        }
    }
    Ok(None)
}

/// A path of dependencies from `sync` back to itself, if there is one (depth-first).
async fn cycle(ctx: &Context, sync: &GitSync) -> Result<Option<Vec<String>>, kube::Error> {
    let start = key_of(sync);
    let mut path = vec![(start.clone(), sync.spec.depends_on.clone(), 0usize)];
    let mut seen = BTreeSet::from([start.clone()]);
    while let Some((key, deps, next)) = path.last_mut() {
        let Some(dependency) = deps.get(*next) else {
            path.pop();
            continue;
        };
        *next += 1;
        let own = key
            .split_once('/')
            .map(|(ns, _)| ns.to_string())
            .unwrap_or_default();
        let (namespace, name) = key_of_ref(dependency, &own);
        let dep_key = format!("{namespace}/{name}");
        if dep_key == start {
            let mut cycle: Vec<String> = path.iter().map(|(k, _, _)| k.clone()).collect();
            cycle.push(start);
            return Ok(Some(cycle));
        }
        if !seen.insert(dep_key.clone()) || path.len() >= MAX_DEPTH {
            continue;
        }
        let api: Api<GitSync> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Some(found) = api.get_opt(&name).await? {
            path.push((dep_key, found.spec.depends_on.clone(), 0));
        }
    }
    Ok(None)
}

/// Before a due sync: when a dependency is not ready, the status says so (written only when
/// it changes) and the GitSync is looked at again shortly; None when it may sync.
pub async fn hold(
    ctx: &Context,
    sync: &GitSync,
    update: &StatusUpdate<'_>,
) -> Result<Option<Action>, ControllerError> {
    if sync.spec.depends_on.is_empty() {
        return Ok(None);
    }
    let waiting = match waiting(ctx, sync).await {
        Ok(None) => return Ok(None),
        Ok(Some(w)) => w,
        Err(e) => Waiting::NotReady("dependencies".into(), crate::kube_ext::kube_message(&e)),
    };
    let (why, message, stalled) = match &waiting {
        Waiting::NotReady(which, why) => (
            reason::DEPENDENCY_NOT_READY,
            format!("waiting for GitSync {which}: {why}"),
            false,
        ),
        Waiting::Cycle(cycle) => (
            reason::DEPENDENCY_CYCLE,
            format!("dependsOn forms a cycle: {}", cycle.join(" → ")),
            true,
        ),
    };
    let ready = update.old.conditions.iter().find(|c| c.type_ == "Ready");
    if ready.is_none_or(|c| c.reason != why || c.message != message) {
        info!(sync = %key_of(sync), "{message}");
        patch_status(ctx, sync, update.waiting(why, &message, stalled)).await?;
    }
    Ok(Some(match stalled {
        true => Action::await_change(),
        false => Action::requeue(RECHECK),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gitsync(status: serde_json::Value, generation: i64) -> GitSync {
        let mut sync: GitSync = serde_json::from_value(json!({
            "apiVersion": "kubesync.dev/v1alpha1", "kind": "GitSync",
            "metadata": {"name": "infra", "namespace": "ops", "generation": generation},
            "spec": {"url": "https://example.org/r.git"},
            "status": status,
        }))
        .expect("GitSync");
        sync.metadata.generation = Some(generation);
        sync
    }

    #[test]
    fn a_dependency_is_ready_when_ready_current_and_its_last_attempt_applied() {
        let ready = json!({"observedGeneration": 2, "lastAppliedRevision": "a", "lastAttemptedRevision": "a",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
                "lastTransitionTime": "2026-12-03T00:00:00Z"}]});
        assert_eq!(not_ready(Some(&gitsync(ready.clone(), 2))), None);
        assert!(not_ready(None).is_some_and(|w| w == "not found"));
        assert!(
            not_ready(Some(&gitsync(ready.clone(), 3))).is_some(),
            "spec changed"
        );
        let mut failed_attempt = ready.clone();
        failed_attempt["lastAttemptedRevision"] = json!("b");
        assert!(not_ready(Some(&gitsync(failed_attempt, 2))).is_some());
        let mut failing = ready;
        failing["conditions"][0]["status"] = json!("False");
        failing["conditions"][0]["reason"] = json!("ApplyFailed");
        let why = not_ready(Some(&gitsync(failing, 2))).expect("not ready");
        assert!(why.starts_with("ApplyFailed"), "{why}");
    }
}
