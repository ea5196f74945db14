//! Sharding (`--shards`): 60 GitSyncs synced by 1 and by 3 replicas. Each GitSync is synced by
//! exactly the replica that holds its shard's Lease (checked from the Leases and each process's
//! metrics), a label pins one to a shard, a SIGKILLed replica's GitSyncs resume on the others
//! within a lease period after its Lease expires, and no two replicas ever sync one GitSync at
//! the same time (checked from every replica's log).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kubesync::crd::GitSync;
use kubesync::shard::{SHARD_LABEL, shard_of};
use serde_json::json;

use crate::support::controller::{ControllerProcess, install_crd};
use crate::support::faults::request_sync;
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::{TestNamespace, eventually};

const GITSYNCS: usize = 60;
const SHARDS: u32 = 3;
const LEASE: Duration = Duration::from_secs(4);

fn repo_of_sixty(value: &str, repo: &GitRepo) -> String {
    for i in 0..GITSYNCS {
        repo.write(
            &format!("apps/{i}/cm.yaml"),
            &configmap(&format!("cm-{i}"), value),
        );
    }
    repo.commit_and_push(value)
}

fn replica(ns: &TestNamespace, id: &str) -> ControllerProcess {
    ControllerProcess::start(
        &ns.name,
        &[
            "--shards",
            &SHARDS.to_string(),
            "--lease-namespace",
            &ns.name,
            "--identity",
            id,
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
        ],
    )
}

/// Holder of each shard Lease.
async fn holders(ns: &TestNamespace) -> BTreeMap<u32, String> {
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut out = BTreeMap::new();
    for shard in 0..SHARDS {
        let holder = (leases
            .get_opt(&format!("kubesync-shard-{shard}"))
            .await
            .ok())
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty());
        if let Some(h) = holder {
            out.insert(shard, h);
        }
    }
    out
}

/// Waits until the shard Leases are held by exactly `replicas` distinct replicas, all shards held.
async fn balanced(ns: &TestNamespace, replicas: usize) -> BTreeMap<u32, String> {
    eventually(
        Duration::from_secs(40),
        "shards spread over the replicas",
        || async {
            let held = holders(ns).await;
            let distinct: std::collections::BTreeSet<&String> = held.values().collect();
            (held.len() == SHARDS as usize && distinct.len() == replicas).then_some(held.clone())
        },
    )
    .await
}

fn name(i: usize) -> String {
    format!("gs-{i}")
}

/// gs-0 is created pinned to shard 2 by label; gs-1 is re-pinned just after its creation, to a
/// shard its hash does not give (it moves between replicas while its first sync may run); the
/// others go by hash.
async fn create_sixty(ns: &TestNamespace, url: &str) -> Api<GitSync> {
    let api: Api<GitSync> = Api::namespaced(ns.client.clone(), &ns.name);
    for i in 0..GITSYNCS {
        let spec = json!({"url": url, "path": format!("apps/{i}"), "interval": "1h"});
        let mut sync: GitSync = serde_json::from_value(json!({
            "apiVersion": "kubesync.dev/v1alpha1", "kind": "GitSync",
            "metadata": {"name": name(i), "namespace": ns.name},
            "spec": spec,
        }))
        .expect("GitSync");
        if i == 0 {
            sync.metadata.labels = Some([(SHARD_LABEL.to_string(), "2".to_string())].into());
        }
        api.create(&Default::default(), &sync)
            .await
            .expect("create");
    }
    let moved = (shard_of(&ns.name, &name(1), None, SHARDS) + 1) % SHARDS;
    let pin = json!({"metadata": {"labels": {SHARD_LABEL: moved.to_string()}}});
    api.patch(&name(1), &Default::default(), &kube::api::Patch::Merge(pin))
        .await
        .expect("re-pin gs-1");
    api
}

fn shard_of_gitsync(ns: &TestNamespace, i: usize) -> u32 {
    match i {
        0 => 2,
        1 => (shard_of(&ns.name, &name(1), None, SHARDS) + 1) % SHARDS,
        _ => shard_of(&ns.name, &name(i), None, SHARDS),
    }
}

async fn all_at(
    api: &Api<GitSync>,
    which: &[usize],
    revision: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    eventually(
        timeout,
        &format!("{} GitSyncs apply {revision}", which.len()),
        || async {
            for i in which {
                let sync = api.get(&name(*i)).await.ok()?;
                let applied = sync.status?.last_applied_revision;
                if applied.as_deref() != Some(revision) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    started.elapsed()
}

/// Sync intervals per GitSync and replica, from "sync due" to "sync finished" in each log; an
/// interval still open at the end of a log lasts until `open_until`.
fn sync_intervals(
    logs: &[(String, String)],
    open_until: Timestamp,
) -> BTreeMap<String, Vec<(String, Timestamp, Timestamp)>> {
    let mut out: BTreeMap<String, Vec<(String, Timestamp, Timestamp)>> = BTreeMap::new();
    for (replica, log) in logs {
        let mut open: BTreeMap<String, Timestamp> = BTreeMap::new();
        for line in log.lines() {
            let Some(at) = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let Some(object) = line
                .split("object.ref=GitSync.v1alpha1.kubesync.dev/")
                .nth(1)
                .and_then(|rest| rest.split([' ', '}']).next())
            else {
                continue;
            };
            if line.contains("sync due") {
                open.insert(object.to_string(), at);
            } else if line.contains("sync finished")
                && let Some(start) = open.remove(object)
            {
                out.entry(object.into())
                    .or_default()
                    .push((replica.clone(), start, at));
            }
        }
        for (object, start) in open {
            out.entry(object)
                .or_default()
                .push((replica.clone(), start, open_until));
        }
    }
    out
}

#[tokio::test]
async fn three_replicas_share_sixty_gitsyncs_take_over_a_killed_one_and_never_overlap() {
    let repo = GitRepo::new();
    let first = repo_of_sixty("v1", &repo);
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let everyone: Vec<usize> = (0..GITSYNCS).collect();

    // One replica holding all three shards.
    let single = TestNamespace::new("shard1").await;
    install_crd(&single.client).await;
    let one = replica(&single, "solo");
    balanced(&single, 1).await;
    let api = create_sixty(&single, &url).await;
    let alone = all_at(&api, &everyone, &first, Duration::from_secs(120)).await;
    drop(one);

    // Three replicas; the first takes all shards and hands two over as the others join.
    let ns = TestNamespace::new("shard3").await;
    let ids = ["r0", "r1", "r2"];
    let mut replicas: BTreeMap<String, ControllerProcess> = ids
        .iter()
        .map(|id| (id.to_string(), replica(&ns, id)))
        .collect();
    let held = balanced(&ns, 3).await;
    let api = create_sixty(&ns, &url).await;
    let shared = all_at(&api, &everyone, &first, Duration::from_secs(120)).await;
    println!(
        "60 GitSyncs Ready: {:.2} s with 1 replica, {:.2} s with 3 (ratio {:.2})",
        alone.as_secs_f64(),
        shared.as_secs_f64(),
        alone.as_secs_f64() / shared.as_secs_f64()
    );

    // Exactly the holder of each GitSync's shard synced it (gs-1 moved: perhaps both).
    for i in (0..GITSYNCS).filter(|i| *i != 1) {
        let holder = &held[&shard_of_gitsync(&ns, i)];
        let series = format!(
            "kubesync_sync_runs_total{{sync=\"{}/{}\",result=\"success\"}}",
            ns.name,
            name(i)
        );
        for (id, process) in &replicas {
            let runs = process.metric(&series);
            match id == holder {
                true => assert!(runs >= 1.0, "{} synced by its shard's holder {id}", name(i)),
                false => assert_eq!(runs, 0.0, "{} not synced by {id}", name(i)),
            }
        }
    }
    for (id, process) in &replicas {
        let owned: f64 = (0..SHARDS)
            .map(|s| process.metric(&format!("kubesync_shard_owned{{shard=\"{s}\"}}")))
            .sum();
        assert_eq!(owned, 1.0, "{id} reports one shard owned");
    }

    // SIGKILL the holder of gs-0's shard (2, pinned); a new commit must reach its GitSyncs.
    let victim = held[&2].clone();
    let orphans: Vec<usize> = (0..GITSYNCS)
        .filter(|i| held[&shard_of_gitsync(&ns, *i)] == victim)
        .collect();
    let mut dead = replicas.remove(&victim).expect("victim");
    dead.kill();
    let killed = Instant::now();
    let second = repo_of_sixty("v2", &repo);
    for i in &orphans {
        request_sync(&api, &name(*i), "v2").await;
    }
    let taken = eventually(3 * LEASE, "a survivor takes shard 2", || async {
        let holder = holders(&ns).await.remove(&2)?;
        (holder != victim).then(|| killed.elapsed())
    })
    .await;
    all_at(&api, &orphans, &second, 4 * LEASE).await;
    let resumed = killed.elapsed();
    println!(
        "shard 2 taken over {:.2} s after the SIGKILL (lease {} s); its {} GitSyncs applied the \
         next commit {:.2} s after the SIGKILL",
        taken.as_secs_f64(),
        LEASE.as_secs(),
        orphans.len(),
        resumed.as_secs_f64()
    );
    // The Lease was renewed at most a retry period (1.5 s here) before the kill, so it expires
    // within one lease duration of it; a survivor takes it at its next round.
    assert!(
        taken <= LEASE + Duration::from_secs(3),
        "taken over within a lease period: {taken:?}"
    );
    for i in (0..GITSYNCS).filter(|i| !orphans.contains(i)) {
        request_sync(&api, &name(i), "v2").await;
    }
    all_at(&api, &everyone, &second, Duration::from_secs(60)).await;
    let after = holders(&ns).await;
    assert!(
        after.len() == SHARDS as usize && !after.values().any(|h| *h == victim),
        "the survivors hold every shard: {after:?}"
    );

    // No GitSync was ever synced by two replicas at once.
    let mut logs = vec![(victim.clone(), dead.log_text())];
    logs.extend(replicas.iter().map(|(id, p)| (id.clone(), p.log_text())));
    let intervals = sync_intervals(&logs, Timestamp::now());
    assert!(
        intervals.len() >= GITSYNCS,
        "every GitSync's syncs are in the logs"
    );
    for (object, mut runs) in intervals {
        runs.sort_by_key(|(_, start, _)| *start);
        for pair in runs.windows(2) {
            let ((a, _, a_end), (b, b_start, _)) = (&pair[0], &pair[1]);
            assert!(
                a == b || a_end <= b_start,
                "{object}: synced by {a} until {a_end} and by {b} from {b_start}"
            );
        }
    }
}
