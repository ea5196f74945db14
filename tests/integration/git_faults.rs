//! Faults of the Git side: a server that accepts and never answers and one that answers slowly
//! (the timeout is honoured either way), the repository deleted, history replaced by an unrelated one, and a cache that cannot be written.
//! Each: the sync fails fast and says why, nothing is lost or pruned, and once the fault clears
//! the next sync converges.
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kubesync::source::{GitRef, SourceSpec};
use kubesync::sync::{PruneBlocked, SyncOptions, SyncReport};

use crate::support::TestNamespace;
use crate::support::git::{GitDaemon, GitRepo, git};
use crate::support::manifests::configmap;

async fn sync(ns: &TestNamespace, url: &str, cache: &Path, timeout: Duration) -> SyncReport {
    let spec = SourceSpec {
        url: url.into(),
        reference: GitRef::Branch("main".into()),
        auth: Default::default(),
        timeout,
    };
    kubesync::sync::sync_source(
        &kubesync::sync::Clients::from(&ns.client),
        &spec,
        cache,
        &SyncOptions::new(&ns.name, &ns.name),
    )
    .await
}

async fn present(ns: &TestNamespace, name: &str) -> bool {
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    api.get_opt(name).await.expect("get").is_some()
}

/// A repository holding ConfigMap `a`, served by a git daemon, synced once into a new namespace.
async fn synced_once(prefix: &str) -> (TestNamespace, GitRepo, GitDaemon, tempfile::TempDir) {
    let ns = TestNamespace::new(prefix).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    repo.commit_and_push("a");
    let daemon = GitDaemon::start(repo.root.path());
    let cache = tempfile::tempdir().expect("cache");
    let url = daemon.url();
    assert!(
        sync(&ns, &url, cache.path(), Duration::from_secs(20))
            .await
            .succeeded()
    );
    (ns, repo, daemon, cache)
}

fn assert_failed_in_source_without_prune(report: &SyncReport, says: &str) {
    assert!(!report.succeeded(), "must fail: {:?}", report.objects);
    assert_eq!(report.failure, Some(kubesync::sync::Step::Source));
    assert!(matches!(report.prune_blocked, Some(PruneBlocked::Failure)));
    assert_eq!(report.summary.pruned, 0);
    let errors = report.error_messages().join("\n");
    assert!(
        errors.to_lowercase().contains(says),
        "the error says {says:?}: {errors}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_prunes_nothing() {
    let (ns, _repo, _daemon, cache) = synced_once("gf-slow").await;

    // A listener that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok((stream, _)) = silent.accept() {
                held.push(stream);
            }
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let started = Instant::now();
    let report = sync(
        &ns,
        &format!("git://127.0.0.1:{port}/remote.git"),
        cache.path(),
        Duration::from_secs(3),
    )
    .await;
    let took = started.elapsed();
    assert_failed_in_source_without_prune(&report, "timed out");
    assert!(
        took < Duration::from_secs(8),
        "the 3 s timeout is honoured (took {took:?})"
    );
    assert!(present(&ns, "a").await);
    drop(hold);
}

/// A proxy in front of 127.0.0.1:`upstream` that passes the server's bytes on at most `chunk` at a
/// time, pausing `pause` before each (what the client sends goes through at once).
fn slow_proxy(upstream: u16, chunk: usize, pause: Duration) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            std::thread::spawn(move || {
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (Ok(mut from_client), Ok(mut to_server)) =
                    (client.try_clone(), server.try_clone())
                else {
                    return;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                });
                let mut buf = vec![0u8; chunk];
                while let Ok(n) = server.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(pause);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[tokio::test]
async fn a_server_that_answers_slowly_is_cut_off_at_the_timeout_and_prunes_nothing() {
    use sha2::Digest;
    let (ns, repo, daemon, cache) = synced_once("gf-trickle").await;
    // The next commit removes `a` and adds about 40 KB that do not compress.
    git(&repo.work(), &["rm", "-q", "a.yaml"]);
    for i in 0..20 {
        let noise: String = (0..32)
            .map(|j| format!("{:x}", sha2::Sha256::digest(format!("{i}-{j}"))))
            .collect();
        repo.write(&format!("b{i}.yaml"), &configmap(&format!("b{i}"), &noise));
    }
    repo.commit_and_push("b");

    // About 1.3 KB/s: the fetch would take half a minute.
    let trickle = slow_proxy(daemon.port, 64, Duration::from_millis(50));
    let started = Instant::now();
    let report = sync(
        &ns,
        &format!("git://127.0.0.1:{trickle}/remote.git"),
        cache.path(),
        Duration::from_secs(3),
    )
    .await;
    let took = started.elapsed();
    assert_failed_in_source_without_prune(&report, "timed out");
    assert!(
        took < Duration::from_secs(8),
        "the 3 s timeout is honoured by a server that keeps talking (took {took:?})"
    );
    assert!(present(&ns, "a").await, "nothing pruned");
    assert!(!present(&ns, "b0").await, "nothing applied");

    // Slow but within the timeout: the sync completes and converges.
    let slow = slow_proxy(daemon.port, 4096, Duration::from_millis(20));
    let report = sync(
        &ns,
        &format!("git://127.0.0.1:{slow}/remote.git"),
        cache.path(),
        Duration::from_secs(60),
    )
    .await;
    assert!(report.succeeded(), "slow but in time: {:?}", report.errors);
    assert!(!present(&ns, "a").await, "pruned once the fetch succeeded");
    assert!(present(&ns, "b19").await);
}

#[tokio::test]
async fn a_deleted_repository_fails_and_a_restored_one_converges() {
    let ns = TestNamespace::new("gf-gone").await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    repo.write("b.yaml", &configmap("b", "1"));
    repo.commit_and_push("ab");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let cache = tempfile::tempdir().expect("cache");
    assert!(
        sync(&ns, &url, cache.path(), Duration::from_secs(20))
            .await
            .succeeded()
    );

    let remote = repo.remote();
    let parked = repo.root.path().join("parked.git");
    std::fs::rename(&remote, &parked).expect("delete the repository");
    let report = sync(&ns, &url, cache.path(), Duration::from_secs(20)).await;
    assert!(!report.succeeded());
    assert_eq!(report.failure, Some(kubesync::sync::Step::Source));
    assert!(matches!(report.prune_blocked, Some(PruneBlocked::Failure)));
    assert!(
        present(&ns, "a").await && present(&ns, "b").await,
        "nothing lost"
    );

    // Back, with b removed meanwhile: the next sync follows it.
    std::fs::rename(&parked, &remote).expect("restore");
    repo.remove("b.yaml");
    repo.commit_and_push("drop b");
    let report = sync(&ns, &url, cache.path(), Duration::from_secs(20)).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert!(present(&ns, "a").await && !present(&ns, "b").await);
}

#[tokio::test]
async fn history_replaced_by_an_unrelated_one_is_followed() {
    let ns = TestNamespace::new("gf-orphan").await;
    let repo = GitRepo::new();
    repo.write("old.yaml", &configmap("old", "1"));
    let first = repo.commit_and_push("old history");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let cache = tempfile::tempdir().expect("cache");
    assert!(
        sync(&ns, &url, cache.path(), Duration::from_secs(20))
            .await
            .succeeded()
    );

    // An orphan branch with nothing in common, force-pushed over main.
    git(&repo.work(), &["checkout", "-q", "--orphan", "fresh"]);
    git(&repo.work(), &["rm", "-q", "-rf", "."]);
    repo.write("new.yaml", &configmap("new", "1"));
    let replaced = repo.commit_and_push("unrelated history");
    let merge_base = std::process::Command::new("git")
        .arg("-C")
        .arg(repo.work())
        .args(["merge-base", &first, &replaced])
        .output()
        .expect("git");
    assert!(!merge_base.status.success(), "the histories share nothing");
    let report = sync(&ns, &url, cache.path(), Duration::from_secs(20)).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(report.revision.as_deref(), Some(replaced.as_str()));
    assert!(present(&ns, "new").await && !present(&ns, "old").await);
}

#[tokio::test]
async fn an_unusable_cache_fails_clearly_and_prunes_nothing() {
    let ns = TestNamespace::new("gf-cache").await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    repo.commit_and_push("a");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    assert!(
        sync(&ns, &url, &cache, Duration::from_secs(20))
            .await
            .succeeded()
    );

    // The cache path becomes a file (root ignores permission bits, so a mode would prove nothing).
    std::fs::remove_dir_all(&cache).expect("rm");
    std::fs::write(&cache, b"not a directory").expect("write");
    repo.remove("a.yaml");
    repo.write("b.yaml", &configmap("b", "1"));
    repo.commit_and_push("replace a");
    let report = sync(&ns, &url, &cache, Duration::from_secs(20)).await;
    assert!(!report.succeeded());
    assert!(matches!(report.prune_blocked, Some(PruneBlocked::Failure)));
    let errors = report.error_messages().join("\n");
    assert!(
        errors.contains("cache directory"),
        "names the cache: {errors}"
    );
    assert!(present(&ns, "a").await, "nothing pruned");

    std::fs::remove_file(&cache).expect("rm");
    let report = sync(&ns, &url, &cache, Duration::from_secs(20)).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert!(!present(&ns, "a").await && present(&ns, "b").await);
}
