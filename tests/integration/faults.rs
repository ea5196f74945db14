//! Faults on a private control plane (its own ports and state, so other tests keep theirs):
//! kube-apiserver SIGKILLed in the middle of a `kubesync sync` and restarted, and etcd SIGKILLed
//! and restarted while the controller syncs, ten times each at different moments. Nothing may be
//! lost or pruned by a sync that failed, the ApplySet parent must already record the group-kinds,
//! and the next sync must converge.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::support::controller::{
    ControllerProcess, create_gitsync_in, install_crd, wait_for_revision,
};
use crate::support::faults::{
    Fixture, assert_nothing_lost, commit_configmaps, request_sync, time_full_sync,
};
use crate::support::private::{PrivateTestbed, create_namespace};
use crate::support::run;

/// SIGKILLs a component (`kube-apiserver`, `etcd`); returns its pid and command line, to start
/// it again the same way.
fn kill_component(testbed: &PrivateTestbed, component: &str) -> (i32, Vec<String>) {
    let pid: i32 = std::fs::read_to_string(testbed.pid_file(component))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    (pid, args)
}

fn restart_component(testbed: &PrivateTestbed, component: &str, old_pid: i32, args: &[String]) {
    // The old process must be gone (its port free) before the new one binds.
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(
            testbed
                .state
                .path()
                .join(format!("tb/logs/{component}.log")),
        )
        .expect("log");
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("restart {component}: {e}"));
    std::fs::write(testbed.pid_file(component), child.id().to_string()).expect("pid file");
    // The testbed's down stops it through the pid file; nothing waits on it here.
    std::mem::forget(child);
}

async fn wait_ready(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("request");
        if let Ok(text) = client.request_text(req).await
            && text.trim() == "ok"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-apiserver did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_repo(dir: &Path, names: &[usize], value: &str) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in names {
        std::fs::write(
            dir.join(format!("cm-{i}.yaml")),
            crate::support::manifests::configmap(&format!("cm-{i}"), value),
        )
        .expect("write");
    }
}

fn sync_command(testbed: &PrivateTestbed, dir: &Path, ns: &str, cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubesync"));
    command
        .args(["sync", "--repo"])
        .arg(dir)
        .args(["--name", "faults", "-n", ns, "--cache-dir"])
        .arg(cache)
        .env("KUBECONFIG", &testbed.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn apiserver_killed_mid_sync_loses_nothing_prunes_nothing_and_converges() {
    let testbed = PrivateTestbed::up(0);
    let client = testbed.client().await;
    let ns = "faults";
    create_namespace(&client, ns).await;
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("repo");
    let cache = work.path().join("cache");
    let mut in_git: Vec<usize> = (0..300).collect();
    write_repo(&dir, &in_git, "v0");
    let out = sync_command(&testbed, &dir, ns, &cache)
        .output()
        .expect("sync");
    assert!(
        out.status.success(),
        "baseline: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut hit = 0;
    for trial in 0..10usize {
        // Git drops 3 objects and changes every other one.
        let removed: Vec<usize> = in_git.drain(..3).collect();
        let value = format!("v{}", trial + 1);
        write_repo(&dir, &in_git, &value);
        let sync = sync_command(&testbed, &dir, ns, &cache)
            .spawn()
            .expect("sync");
        tokio::time::sleep(Duration::from_millis(80 + 60 * trial as u64)).await;
        let (pid, args) = kill_component(&testbed, "kube-apiserver");
        let out = tokio::task::spawn_blocking(move || sync.wait_with_output())
            .await
            .expect("join")
            .expect("sync output");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "trial {trial}: no panic"
        );
        restart_component(&testbed, "kube-apiserver", pid, &args);
        wait_ready(&client).await;
        if out.status.success() {
            eprintln!("trial {trial}: the sync finished before the kill");
        } else {
            hit += 1;
            // Either the sync failed before its prune and says it did not prune, or it failed
            // inside the prune (every step before it had succeeded) and names what it deleted.
            let in_prune = !stdout.contains("not pruning");
            for i in &removed {
                let gone = (configmaps.get_opt(&format!("cm-{i}")).await)
                    .expect("get")
                    .is_none();
                let said = stdout.contains(&format!("configmap/cm-{i} -n {ns} pruned"));
                assert!(
                    !gone || (in_prune && said),
                    "trial {trial}: cm-{i} was deleted by a sync that failed before its prune, \
                     or without saying so: {stdout}"
                );
            }
        }
        // Nothing Git still holds was lost, whatever the moment of the kill.
        let listed = configmaps.list(&Default::default()).await.expect("list");
        let names: std::collections::BTreeSet<String> = listed
            .items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        for i in &in_git {
            assert!(
                names.contains(&format!("cm-{i}")),
                "trial {trial}: cm-{i} lost"
            );
        }
        // The parent recorded the group-kind before anything was applied: no orphan.
        let parent = Api::<Secret>::namespaced(client.clone(), ns)
            .get("faults")
            .await
            .expect("parent");
        let kinds = parent
            .metadata
            .annotations
            .unwrap_or_default()
            .get("applyset.kubernetes.io/contains-group-kinds")
            .cloned()
            .unwrap_or_default();
        assert!(
            kinds.contains("ConfigMap"),
            "trial {trial}: parent records ConfigMap: {kinds}"
        );

        // Once the fault has cleared, the next sync converges.
        run(&mut sync_command(&testbed, &dir, ns, &cache));
        for i in &removed {
            assert!(
                configmaps
                    .get_opt(&format!("cm-{i}"))
                    .await
                    .expect("get")
                    .is_none(),
                "trial {trial}: cm-{i} pruned after recovery"
            );
        }
        let sample = configmaps
            .get(&format!("cm-{}", in_git[in_git.len() / 2]))
            .await
            .expect("get");
        assert_eq!(
            sample.data.unwrap_or_default().get("key"),
            Some(&value),
            "trial {trial}: current value"
        );
    }
    eprintln!("apiserver killed mid-sync in {hit} of 10 trials");
    assert!(
        hit >= 5,
        "the kill must land mid-sync in most trials (it did in {hit})"
    );
}

#[tokio::test]
async fn etcd_restarted_while_the_controller_syncs_loses_nothing_and_converges() {
    const INTERVAL: Duration = Duration::from_secs(4);
    let testbed = PrivateTestbed::up(1);
    let client = testbed.client().await;
    let ns = "faults-etcd";
    create_namespace(&client, ns).await;
    install_crd(&client).await;
    let fixture = Fixture::new();
    let url = fixture.url();
    let Fixture {
        repo,
        daemon: _daemon,
        mut in_git,
        first,
        work,
    } = fixture;
    let replica = ControllerProcess::spawn(
        ns,
        &work.path().join("cache"),
        work.path().join("controller.log"),
        &[],
        &[("KUBECONFIG", &testbed.kubeconfig)],
    );
    let api = create_gitsync_in(
        &client,
        ns,
        "app",
        serde_json::json!({"url": url, "interval": "4s"}),
    )
    .await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(90)).await;
    let full = time_full_sync(&api, &repo, &in_git, "warm-up").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let failed_runs = format!("kubesync_sync_runs_total{{sync=\"{ns}/app\",result=\"failure\"}}");

    let mut hits = 0;
    for trial in 0..10usize {
        let removed: Vec<usize> = in_git.drain(..3).collect();
        let value = format!("v{}", trial + 1);
        let revision = commit_configmaps(&repo, &in_git, &value);
        let failed_before = replica.metric(&failed_runs);
        request_sync(&api, "app", &value).await;
        // Spread over the first half of a sync: the history's end times are whole seconds, so
        // a kill in a sync's last part can read as "outside" it.
        tokio::time::sleep(full.mul_f64((trial as f64 + 0.5) / 20.0)).await;
        let (pid, args) = kill_component(&testbed, "etcd");
        let killed = k8s_openapi::jiff::Timestamp::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        restart_component(&testbed, "etcd", pid, &args);
        wait_ready(&client).await;
        let cleared = Instant::now();
        assert_nothing_lost(&api, &configmaps, &in_git, &removed, &value, trial).await;
        wait_for_revision(&api, "app", &revision, 2 * INTERVAL).await;
        let converged = cleared.elapsed();
        crate::support::faults::assert_converged(&configmaps, &in_git, &removed, &value, trial)
            .await;
        // What the status says: did the outage fall inside a sync, and how did that sync end?
        let history = api
            .get("app")
            .await
            .expect("GitSync")
            .status
            .expect("status")
            .history;
        let spanning = history.iter().find(|h| {
            let end = h.time.0;
            let start = end
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs_f64(
                    h.duration_seconds,
                ))
                .unwrap_or(end);
            start <= killed && killed <= end
        });
        let failed = replica.metric(&failed_runs) - failed_before;
        eprintln!(
            "trial {trial}: etcd killed {}; {failed} failed sync(s) counted; converged {converged:?} after the API was back",
            match spanning {
                Some(h) => format!("during a sync that {}", h.result),
                None => "outside a sync".into(),
            }
        );
        if let Some(h) = spanning {
            hits += 1;
            if h.result == "Failed" {
                assert!(failed >= 1.0, "trial {trial}: the failure is counted");
            }
        }
    }
    eprintln!("etcd was killed during a sync in {hits} of 10 trials");
    assert!(
        hits >= 5,
        "the kill must land mid-sync in most trials ({hits})"
    );
}
