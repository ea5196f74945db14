//! The Git source against real repositories: file:// and git daemon (git://) on loopback.
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kubesync::source::{GitRef, SourceSpec};
use kubesync::sync::{Action, SyncOptions, SyncReport};

use crate::support::TestNamespace;
use crate::support::git::{GitDaemon, GitRepo, git};
use crate::support::manifests::{configmap, result_of};

async fn sync_git(ns: &TestNamespace, url: &str, cache: &Path) -> SyncReport {
    let spec = SourceSpec {
        url: url.into(),
        reference: GitRef::Branch("main".into()),
        auth: Default::default(),
        timeout: Duration::from_secs(30),
    };
    kubesync::sync::sync_source(
        &kubesync::sync::Clients::from(&ns.client),
        &spec,
        cache,
        &SyncOptions::new(&ns.name, &ns.name),
    )
    .await
}

#[tokio::test]
async fn file_url_follows_commits_and_force_pushes() {
    let ns = TestNamespace::new("git-file").await;
    let repo = GitRepo::new();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", repo.remote().display());
    repo.write("a.yaml", &configmap("a", "1"))
        .write("b.yaml", &configmap("b", "1"));
    let first_commit = repo.commit_and_push("first");
    let first = sync_git(&ns, &url, cache.path()).await;
    assert!(first.succeeded(), "{:?}", first.errors);
    assert_eq!(first.revision.as_deref(), Some(first_commit.as_str()));
    assert!(first.fetched);

    // The ref did not move: nothing is fetched, the sync still re-asserts Git.
    let same = sync_git(&ns, &url, cache.path()).await;
    assert!(!same.fetched, "an unmoved ref fetches nothing");
    assert_eq!(same.summary.unchanged, 2);

    // A new commit removes b.
    repo.remove("b.yaml");
    let second_commit = repo.commit_and_push("drop b");
    let second = sync_git(&ns, &url, cache.path()).await;
    assert_eq!(second.revision.as_deref(), Some(second_commit.as_str()));
    assert_eq!(
        result_of(&second, &format!("configmap/b -n {}", ns.name)),
        &Action::Pruned
    );

    // Force-push unrelated history: followed, not merged.
    let fresh = GitRepo::new();
    git(
        &fresh.work(),
        &[
            "remote",
            "set-url",
            "origin",
            &repo.remote().display().to_string(),
        ],
    );
    fresh.write("c.yaml", &configmap("c", "unrelated"));
    let rewritten = fresh.commit_and_push("unrelated history");
    let third = sync_git(&ns, &url, cache.path()).await;
    assert!(third.succeeded(), "{:?}", third.errors);
    assert_eq!(third.revision.as_deref(), Some(rewritten.as_str()));
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(api.get_opt("c").await.expect("get").is_some());
    assert!(
        api.get_opt("a").await.expect("get").is_none(),
        "a left Git with the rewrite and was pruned"
    );
}

#[tokio::test]
async fn git_daemon_url_and_missing_refs() {
    let ns = TestNamespace::new("git-daemon").await;
    let repo = GitRepo::new();
    repo.write("deploy/app.yaml", &configmap("app", "v1"));
    let commit = repo.commit_and_push("app");
    git(&repo.work(), &["tag", "v1.0"]);
    git(&repo.work(), &["push", "-q", "origin", "v1.0"]);
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let cache = tempfile::tempdir().expect("cache");
    let report = sync_git(&ns, &url, cache.path()).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(report.revision.as_deref(), Some(commit.as_str()));

    // A tag and a commit work as refs too.
    for reference in [GitRef::Tag("v1.0".into()), GitRef::Commit(commit.clone())] {
        let spec = SourceSpec {
            url: url.clone(),
            reference,
            auth: Default::default(),
            timeout: Duration::from_secs(30),
        };
        let checkout = kubesync::source::fetch(&spec, cache.path())
            .await
            .expect("fetch by tag or commit");
        assert_eq!(checkout.revision, commit);
        assert!(checkout.dir.join("deploy/app.yaml").is_file());
    }

    let spec = SourceSpec {
        url: url.clone(),
        reference: GitRef::Branch("nope".into()),
        auth: Default::default(),
        timeout: Duration::from_secs(30),
    };
    let err = kubesync::source::fetch(&spec, cache.path())
        .await
        .expect_err("missing branch");
    assert!(
        err.to_string().contains("refs/heads/nope not found"),
        "{err}"
    );

    // A server that is gone fails fast and says so; nothing is pruned.
    drop(daemon);
    let started = std::time::Instant::now();
    let failed = sync_git(&ns, &url, cache.path()).await;
    assert!(!failed.succeeded());
    assert_eq!(failed.failure, Some(kubesync::sync::Step::Source));
    assert!(started.elapsed() < Duration::from_secs(30));
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(api.get_opt("app").await.expect("get").is_some());
}
