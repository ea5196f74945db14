//! The Git source against real repositories: file:// and git daemon (git://) on loopback.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kubesync::source::{GitRef, SourceSpec};
use kubesync::sync::{ObjectResult, SyncOptions, SyncReport};

use crate::engine::{configmap, result_of};
use crate::support::TestNamespace;

/// A working repository with a bare remote that tests push to.
pub struct GitRepo {
    pub root: tempfile::TempDir,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("work")).expect("mkdir");
        git(
            root.path(),
            &["init", "-q", "--bare", "-b", "main", "remote.git"],
        );
        git(&root.path().join("work"), &["init", "-q", "-b", "main"]);
        git(
            &root.path().join("work"),
            &["remote", "add", "origin", "../remote.git"],
        );
        GitRepo { root }
    }

    pub fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    pub fn remote(&self) -> PathBuf {
        self.root.path().join("remote.git")
    }

    pub fn write(&self, path: &str, content: &str) -> &Self {
        let full = self.work().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write");
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        git(&self.work(), &["rm", "-q", path]);
        self
    }

    /// Commits everything and pushes; returns the commit id.
    pub fn commit_and_push(&self, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", message]);
        git(&self.work(), &["push", "-q", "-f", "origin", "HEAD:main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}

pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        Self::start_on(base, free_port())
    }

    /// On a given port (to restart a stopped daemon where its clients expect it).
    pub fn start_on(base: &Path, port: u16) -> GitDaemon {
        // Run git-daemon itself: `git daemon` would leave it running when killed.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
            ])
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon starts (is git installed?)");
        let mut daemon = GitDaemon { child, port };
        crate::support::wait_for_listener(&mut daemon.child, port, "git daemon");
        daemon
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn sync_git(ns: &TestNamespace, url: &str, cache: &Path) -> SyncReport {
    let spec = SourceSpec {
        url: url.into(),
        reference: GitRef::Branch("main".into()),
        auth: Default::default(),
        timeout: Duration::from_secs(30),
    };
    kubesync::sync::sync_source(
        &ns.client,
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
        &ObjectResult::Pruned
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
    let url = format!("git://127.0.0.1:{}/remote.git", daemon.port);
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
    assert_eq!(failed.failure, Some("source"));
    assert!(started.elapsed() < Duration::from_secs(30));
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(api.get_opt("app").await.expect("get").is_some());
}
