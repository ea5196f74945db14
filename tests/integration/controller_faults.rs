//! Faults under the controller, each repeated where timing matters: the controller SIGKILLed in
//! the middle of a sync and restarted; the leader killed during a sync; the git server stopped.
//! Each time: nothing Git holds is lost, nothing is pruned before all of Git was applied, the
//! GitSync (the ApplySet parent) already records the group-kinds, the GitSync converges within
//! two intervals once the fault has cleared, and its status, Events and metrics say what happened.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, lease_holder, wait_for_revision,
};
use crate::support::faults::{
    Fixture, OBJECTS, assert_converged, assert_nothing_lost, commit_configmaps, request_sync,
    sync_in_flight, time_full_sync,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::{TestNamespace, eventually};

async fn interrupted_events(ns: &TestNamespace) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ns.client.clone(), &ns.name);
    events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Interrupted"))
        .filter_map(|e| e.note)
        .collect()
}

const INTERVAL: Duration = Duration::from_secs(4);

#[tokio::test]
async fn controller_killed_mid_sync_and_restarted_loses_nothing_and_says_so() {
    let ns = TestNamespace::new("ctlkill").await;
    install_crd(&ns.client).await;
    let fixture = Fixture::new();
    let url = fixture.url();
    // `_daemon` keeps the git daemon running until the end of the test.
    let Fixture {
        repo,
        daemon: _daemon,
        mut in_git,
        first,
        work,
    } = fixture;
    let cache = work.path().join("cache");
    let start = |n: usize| {
        ControllerProcess::spawn(
            &ns.name,
            &cache,
            work.path().join(format!("controller-{n}.log")),
            &["--identity", &format!("run-{n}")],
            &[],
        )
    };
    let mut replica = start(0);
    let api = create_gitsync(&ns, "app", json!({"url": url, "interval": "4s"})).await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    let full = time_full_sync(&api, &repo, &in_git, "warm-up").await;
    eprintln!("a sync of {OBJECTS} changed objects takes {full:?} from the request");
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);

    let mut hits = 0;
    for trial in 0..10usize {
        let removed: Vec<usize> = in_git.drain(..3).collect();
        let value = format!("v{}", trial + 1);
        let revision = commit_configmaps(&repo, &in_git, &value);
        request_sync(&api, "app", &value).await;
        // Spread over the sync: from before the fetch to the prune.
        tokio::time::sleep(full.mul_f64((trial as f64 + 0.5) / 10.0)).await;
        replica.kill();
        let in_flight = sync_in_flight(&api.get("app").await.expect("GitSync"));
        assert_nothing_lost(&api, &configmaps, &in_git, &removed, &value, trial).await;

        replica = start(trial + 1);
        let restarted = Instant::now();
        wait_for_revision(&api, "app", &revision, 2 * INTERVAL).await;
        eprintln!(
            "trial {trial}: killed {} sync; converged {:?} after the restart",
            if in_flight { "during a" } else { "outside a" },
            restarted.elapsed()
        );
        assert_converged(&configmaps, &in_git, &removed, &value, trial).await;
        if in_flight {
            hits += 1;
            // The revision may have been applied before the kill (the kill landed in a second
            // sync of it): the restarted controller resumes the interrupted sync at once
            // anyway, and counts it.
            let series = format!(
                "kubesync_sync_runs_total{{sync=\"{}/app\",result=\"interrupted\"}}",
                ns.name
            );
            eventually(
                INTERVAL,
                &format!("trial {trial}: the restarted controller counts the interrupted sync"),
                || async { (replica.metric(&series) == 1.0).then_some(()) },
            )
            .await;
            let sync = api.get("app").await.expect("GitSync");
            let history = sync.status.expect("status").history;
            assert!(
                history.iter().any(|h| h.result == "Interrupted"),
                "trial {trial}: history records the interrupted sync: {history:?}"
            );
            let notes = interrupted_events(&ns).await;
            assert!(
                notes.iter().any(|n| n.contains(&format!("on run-{trial}"))),
                "trial {trial}: an Interrupted event names the replica that stopped: {notes:?}"
            );
        }
    }
    eprintln!("the controller was killed mid-sync in {hits} of 10 trials");
    assert!(
        hits >= 5,
        "the kill must land mid-sync in most trials ({hits})"
    );
}

#[tokio::test]
async fn leader_killed_during_a_sync_hands_over_and_converges() {
    let ns = TestNamespace::new("ldrkill").await;
    install_crd(&ns.client).await;
    let fixture = Fixture::new();
    let url = fixture.url();
    // `_daemon` keeps the git daemon running until the end of the test.
    let Fixture {
        repo,
        daemon: _daemon,
        mut in_git,
        first,
        work,
    } = fixture;
    let start = |id: &str| {
        ControllerProcess::spawn(
            &ns.name,
            &work.path().join(format!("cache-{id}")),
            work.path().join(format!("{id}.log")),
            &[
                "--leader-election",
                "--lease-namespace",
                &ns.name,
                "--identity",
                id,
                "--lease-duration",
                "4s",
                "--renew-deadline",
                "3s",
            ],
            &[],
        )
    };
    let mut replicas: Vec<(String, ControllerProcess)> = vec![("r0".into(), start("r0"))];
    tokio::time::sleep(Duration::from_secs(1)).await;
    replicas.push(("r1".into(), start("r1")));
    let api = create_gitsync(&ns, "app", json!({"url": url, "interval": "4s"})).await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    let full = time_full_sync(&api, &repo, &in_git, "warm-up").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);

    let mut hits = 0;
    for trial in 0..10usize {
        let leader = lease_holder(&ns).await.expect("a leader");
        let removed: Vec<usize> = in_git.drain(..3).collect();
        let value = format!("v{}", trial + 1);
        let revision = commit_configmaps(&repo, &in_git, &value);
        request_sync(&api, "app", &value).await;
        tokio::time::sleep(full.mul_f64((trial as f64 + 0.5) / 10.0)).await;
        let at = replicas
            .iter()
            .position(|(id, _)| *id == leader)
            .expect("the leader is one of ours");
        let (_, mut dead) = replicas.remove(at);
        dead.kill();
        let in_flight = sync_in_flight(&api.get("app").await.expect("GitSync"));
        assert_nothing_lost(&api, &configmaps, &in_git, &removed, &value, trial).await;

        // The other replica takes over; a new pod (a new name) joins as the follower.
        let taken = eventually(Duration::from_secs(15), "another replica leads", || async {
            lease_holder(&ns)
                .await
                .filter(|h| *h != leader)
                .map(|h| (h, Instant::now()))
        })
        .await;
        let id = format!("r{}", trial + 2);
        replicas.push((id.clone(), start(&id)));
        wait_for_revision(&api, "app", &revision, 2 * INTERVAL).await;
        eprintln!(
            "trial {trial}: {leader} killed {} sync; {} leads, converged {:?} after the handover",
            if in_flight { "during a" } else { "outside a" },
            taken.0,
            taken.1.elapsed()
        );
        assert!(
            taken.1.elapsed() <= 2 * INTERVAL,
            "trial {trial}: converged within two intervals of the handover"
        );
        assert_converged(&configmaps, &in_git, &removed, &value, trial).await;
        if in_flight {
            hits += 1;
            let notes = interrupted_events(&ns).await;
            assert!(
                notes.iter().any(|n| n.contains(&format!("on {leader}"))),
                "trial {trial}: an Interrupted event names the dead leader: {notes:?}"
            );
        }
    }
    eprintln!("the leader was killed mid-sync in {hits} of 10 trials");
    assert!(
        hits >= 5,
        "the kill must land mid-sync in most trials ({hits})"
    );
}

#[tokio::test]
async fn a_stopped_git_server_fails_fast_is_reported_and_converges_when_back() {
    let ns = TestNamespace::new("gitstop").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    let first = commit_configmaps(&repo, &[0, 1, 2], "v0");
    let mut daemon = Some(GitDaemon::start(repo.root.path()));
    let port = daemon.as_ref().map(|d| d.port).expect("daemon");
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let work = tempfile::tempdir().expect("tempdir");
    let replica = ControllerProcess::spawn(
        &ns.name,
        &work.path().join("cache"),
        work.path().join("controller.log"),
        &[],
        &[],
    );
    let interval = Duration::from_secs(3);
    let api = create_gitsync(&ns, "app", json!({"url": url, "interval": "3s"})).await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let key = format!("{}/app", ns.name);
    let fetch_failures = format!("kubesync_git_fetch_failures_total{{sync=\"{key}\"}}");
    let failed_runs = format!("kubesync_sync_runs_total{{sync=\"{key}\",result=\"failure\"}}");

    for trial in 0..3usize {
        let base = commit_configmaps(&repo, &[0, 1, 2], &format!("base-{trial}"));
        request_sync(&api, "app", &format!("base-{trial}")).await;
        wait_for_revision(&api, "app", &base, Duration::from_secs(30)).await;
        let failures_before = replica.metric(&fetch_failures);

        // The server stops; Git moves on: one object leaves, the others change.
        drop(daemon.take());
        let value = format!("v{}", trial + 1);
        let revision = commit_configmaps(&repo, &[0, 1], &value);
        request_sync(&api, "app", &value).await;
        let stopped = Instant::now();
        let error = eventually(2 * interval, "Ready=False with the fetch error", || async {
            let status = api.get("app").await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(())?;
            status.last_error
        })
        .await;
        eprintln!(
            "trial {trial}: reported {:?} after the request: {error}",
            stopped.elapsed()
        );
        assert!(
            error.to_lowercase().contains("connect") && error.contains(&port.to_string()),
            "trial {trial}: the error says the server cannot be reached: {error}"
        );
        let status = api
            .get("app")
            .await
            .expect("GitSync")
            .status
            .expect("status");
        let last = status.history.first().expect("history");
        assert_eq!(last.result, "Failed");
        assert!(
            last.duration_seconds < 2.0,
            "trial {trial}: fails fast ({} s)",
            last.duration_seconds
        );
        assert!(
            replica.metric(&fetch_failures) > failures_before,
            "fetch failures counted"
        );
        assert!(replica.metric(&failed_runs) >= 1.0, "failed runs counted");
        // Retries fail too, and prune nothing.
        tokio::time::sleep(interval).await;
        assert!(
            configmaps.get_opt("cm-2").await.expect("get").is_some(),
            "trial {trial}: nothing pruned while the server is down"
        );
        assert_eq!(
            crate::support::controller::applied_revision(&api, "app")
                .await
                .as_deref(),
            Some(base.as_str())
        );

        daemon = Some(GitDaemon::start_on(repo.root.path(), port));
        let back = Instant::now();
        wait_for_revision(&api, "app", &revision, 2 * interval).await;
        eprintln!(
            "trial {trial}: converged {:?} after the server came back",
            back.elapsed()
        );
        assert!(configmaps.get_opt("cm-2").await.expect("get").is_none());
        let status = api
            .get("app")
            .await
            .expect("GitSync")
            .status
            .expect("status");
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "trial {trial}: Ready again"
        );
    }
}
