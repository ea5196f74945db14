//! A controller syncing a repository of many objects, and the checks that a fault lost nothing.
use super::controller::wait_for_revision;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kubesync::crd::GitSync;
use serde_json::json;

use super::git::{GitDaemon, GitRepo};
use super::manifests::configmap;

/// The starting point of a fault test: a repository of `OBJECTS` ConfigMaps, committed and served
/// by a git daemon, and a directory for the controllers' caches and logs.
pub struct Fixture {
    pub repo: GitRepo,
    pub daemon: GitDaemon,
    pub in_git: Vec<usize>,
    pub first: String,
    pub work: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let repo = GitRepo::new();
        let in_git: Vec<usize> = (0..OBJECTS).collect();
        let first = commit_configmaps(&repo, &in_git, "v0");
        let daemon = GitDaemon::start(repo.root.path());
        Fixture {
            repo,
            daemon,
            in_git,
            first,
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn url(&self) -> String {
        self.daemon.url()
    }
}

/// Makes the repository hold exactly `cm-<i>` for `names`, each with `value`; returns the commit.
pub fn commit_configmaps(repo: &GitRepo, names: &[usize], value: &str) -> String {
    for entry in std::fs::read_dir(repo.work()).expect("work dir").flatten() {
        if entry.file_name().to_string_lossy().ends_with(".yaml") {
            std::fs::remove_file(entry.path()).expect("rm");
        }
    }
    for i in names {
        repo.write(
            &format!("cm-{i}.yaml"),
            &configmap(&format!("cm-{i}"), value),
        );
    }
    repo.commit_and_push(value)
}

/// Asks for a sync now, as the webhook does.
pub async fn request_sync(api: &Api<GitSync>, name: &str, token: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubesync.dev/requestedAt": token}}})),
    )
    .await
    .expect("requesting a sync");
}

/// Whether the status shows a sync that started and has not finished (Reconciling=True).
pub fn sync_in_flight(sync: &GitSync) -> bool {
    sync.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True")
    })
}

/// The invariants after a fault, whatever its moment: every object Git holds exists; an object
/// Git removed may be gone only if the sync had applied all of Git's objects first (a kill during
/// the prune stage); and the GitSync records ConfigMaps as a group-kind of its ApplySet.
pub async fn assert_nothing_lost(
    api: &Api<GitSync>,
    configmaps: &Api<ConfigMap>,
    in_git: &[usize],
    removed: &[usize],
    value: &str,
    trial: usize,
) {
    let sync = api.get("app").await.expect("GitSync");
    let values: std::collections::BTreeMap<String, Option<String>> = configmaps
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|c| {
            let v = c.data.as_ref().and_then(|d| d.get("key").cloned());
            (c.name_any(), v)
        })
        .collect();
    for i in in_git {
        assert!(
            values.contains_key(&format!("cm-{i}")),
            "trial {trial}: cm-{i} lost"
        );
    }
    let pruned: Vec<&usize> = removed
        .iter()
        .filter(|i| !values.contains_key(&format!("cm-{i}")))
        .collect();
    if !pruned.is_empty() {
        let stale: Vec<&usize> = in_git
            .iter()
            .filter(|i| values[&format!("cm-{i}")].as_deref() != Some(value))
            .collect();
        assert!(
            stale.is_empty(),
            "trial {trial}: {pruned:?} pruned before every object was applied ({} not yet)",
            stale.len()
        );
    }
    let kinds = sync
        .annotations()
        .get("applyset.kubernetes.io/contains-group-kinds")
        .cloned()
        .unwrap_or_default();
    assert!(
        kinds.contains("ConfigMap"),
        "trial {trial}: the GitSync records ConfigMap before applying: {kinds:?}"
    );
}

/// After convergence on `revision`: what Git removed is pruned, what it holds has `value`.
pub async fn assert_converged(
    configmaps: &Api<ConfigMap>,
    in_git: &[usize],
    removed: &[usize],
    value: &str,
    trial: usize,
) {
    for i in removed {
        assert!(
            configmaps
                .get_opt(&format!("cm-{i}"))
                .await
                .expect("get")
                .is_none(),
            "trial {trial}: cm-{i} pruned once converged"
        );
    }
    for i in [
        in_git[0],
        in_git[in_git.len() / 2],
        in_git[in_git.len() - 1],
    ] {
        let cm = configmaps.get(&format!("cm-{i}")).await.expect("get");
        assert_eq!(
            cm.data.unwrap_or_default().get("key").map(String::as_str),
            Some(value),
            "trial {trial}: cm-{i} has the new value"
        );
    }
}

/// How long a sync that changes every object takes, from the request to the applied status: the
/// shortest of three, so that one slowed down by a busy machine does not spread the faults of
/// later trials past the end of their syncs.
pub async fn time_full_sync(
    api: &Api<GitSync>,
    repo: &GitRepo,
    in_git: &[usize],
    value: &str,
) -> Duration {
    let mut shortest = Duration::MAX;
    for round in 0..3 {
        let value = format!("{value}-{round}");
        let revision = commit_configmaps(repo, in_git, &value);
        request_sync(api, "app", &value).await;
        let took = wait_for_revision(api, "app", &revision, Duration::from_secs(60)).await;
        shortest = shortest.min(took);
    }
    shortest
}

pub const OBJECTS: usize = 150;
