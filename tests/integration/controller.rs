//! The controller (`kubesync controller`, run as a process) against the local control plane, with
//! repositories served by a git daemon on loopback.
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, applied_revision, create_gitsync, http, install_crd, lease_holder,
    sign_webhook, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo, free_port};
use crate::support::manifests::configmap;
use crate::support::{TestNamespace, eventually, run, run_with_input};

/// `kubectl wait --for=condition=Ready`, as a user would.
fn kubectl_wait_ready(ns: &str, name: &str, timeout: &str) {
    run(Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Ready",
            &format!("gitsync/{name}"),
            "-n",
            ns,
        ])
        .arg(format!("--timeout={timeout}")));
}

async fn configmap_value(ns: &TestNamespace, name: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    api.get_opt(name).await.ok()??.data?.get("key").cloned()
}

#[tokio::test]
async fn gitsync_follows_commits_prunes_suspends_and_takes_requests() {
    let ns = TestNamespace::new("ctl").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("app/a.yaml", &configmap("a", "one"));
    repo.write("app/b.yaml", &configmap("b", "one"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": url, "path": "app", "interval": "3s"}),
    )
    .await;

    kubectl_wait_ready(&ns.name, "app", "60s");
    assert_eq!(
        applied_revision(&api, "app").await.as_deref(),
        Some(first.as_str())
    );
    let sync = api.get("app").await.expect("get");
    let status = sync.status.expect("status");
    assert_eq!(status.summary.as_ref().map(|s| s.managed), Some(2));
    assert_eq!(status.short_revision.as_deref(), Some(&first[..12]));
    assert_eq!(status.history.len(), 1);
    let parent_labels = sync.metadata.labels.unwrap_or_default();
    assert!(
        parent_labels
            .get("applyset.kubernetes.io/id")
            .is_some_and(|id| id.starts_with("applyset-")),
        "the GitSync is the ApplySet parent: {parent_labels:?}"
    );

    // A new commit is followed within the interval, and a removed file is pruned.
    repo.write("app/a.yaml", &configmap("a", "two"));
    repo.remove("app/b.yaml");
    let second = repo.commit_and_push("second");
    wait_for_revision(&api, "app", &second, Duration::from_secs(20)).await;
    assert_eq!(configmap_value(&ns, "a").await.as_deref(), Some("two"));
    assert_eq!(
        configmap_value(&ns, "b").await,
        None,
        "b left Git and is pruned"
    );

    // Events: one for each sync that changed something (published just after the status).
    let wanted = format!("revision {}", &second[..12]);
    let events = eventually(
        Duration::from_secs(10),
        "an Event for the second sync",
        || {
            let ns = ns.name.clone();
            let wanted = wanted.clone();
            async move {
                let out = Command::new("kubectl")
                    .args(["get", "events", "-n", &ns, "-o", "json"])
                    .output()
                    .ok()?;
                let events = String::from_utf8_lossy(&out.stdout).to_string();
                events.contains(&wanted).then_some(events)
            }
        },
    )
    .await;
    assert!(events.contains("\"reason\": \"Synced\""), "{events}");
    assert!(events.contains("1 configured, 1 pruned"), "{events}");

    // Suspended: new commits are not applied.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    eventually(Duration::from_secs(10), "suspension observed", || async {
        let s = api.get("app").await.ok()?;
        (s.status?.observed_generation == s.metadata.generation).then_some(())
    })
    .await;
    repo.write("app/a.yaml", &configmap("a", "three"));
    let third = repo.commit_and_push("third");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        applied_revision(&api, "app").await.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(configmap_value(&ns, "a").await.as_deref(), Some("two"));
    let (_, metrics) = controller.get("/metrics");
    assert!(
        metrics.contains(&format!("kubesync_suspended{{sync=\"{}/app\"}} 1", ns.name)),
        "{metrics}"
    );

    // Resumed with a long interval: a new requestedAt syncs at once.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false, "interval": "1h"}})),
    )
    .await
    .expect("resume");
    wait_for_revision(&api, "app", &third, Duration::from_secs(20)).await;
    repo.write("app/a.yaml", &configmap("a", "four"));
    let fourth = repo.commit_and_push("fourth");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        applied_revision(&api, "app").await.as_deref(),
        Some(third.as_str()),
        "not before the request"
    );
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubesync.dev/requestedAt": "now-1"}}})),
    )
    .await
    .expect("request");
    let took = wait_for_revision(&api, "app", &fourth, Duration::from_secs(10)).await;
    eprintln!("requestedAt → applied in {took:?}");
    assert_eq!(configmap_value(&ns, "a").await.as_deref(), Some("four"));
    let status = api.get("app").await.expect("get").status.expect("status");
    assert!(
        status.history.len() >= 4 && status.history.len() <= 5,
        "{:?}",
        status.history
    );
    assert_eq!(status.last_handled_requested_at.as_deref(), Some("now-1"));
}

#[tokio::test]
async fn a_signed_webhook_syncs_at_once_and_a_bad_one_gets_401() {
    let ns = TestNamespace::new("hook").await;
    install_crd(&ns.client).await;
    let token = "hook-token-Xy7-never-logged";
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"}, "stringData": {"token": token}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "one"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": url, "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(30)).await;

    repo.write("a.yaml", &configmap("a", "two"));
    let second = repo.commit_and_push("second");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let path = format!("/hooks/{}/app", ns.name);

    // Bad signature, no signature, unknown GitSync: 401, and nothing is synced.
    let bad = sign_webhook(b"wrong-token", body);
    let (status, _) = http(
        controller.port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", format!("sha256={bad}"))],
        body,
    );
    assert_eq!(status, 401);
    let (status, _) = http(controller.port, "POST", &path, &[], body);
    assert_eq!(status, 401);
    let good = sign_webhook(token.as_bytes(), body);
    let (status, _) = http(
        controller.port,
        "POST",
        &format!("/hooks/{}/nope", ns.name),
        &[("X-Hub-Signature-256", format!("sha256={good}"))],
        body,
    );
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        applied_revision(&api, "app").await.as_deref(),
        Some(first.as_str())
    );

    // GitHub-style signature: synced within 2 s.
    let started = Instant::now();
    let (status, _) = http(
        controller.port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", format!("sha256={good}"))],
        body,
    );
    assert_eq!(status, 202);
    wait_for_revision(&api, "app", &second, Duration::from_secs(2)).await;
    eprintln!("signed webhook → applied in {:?}", started.elapsed());

    // Gitea/Forgejo and GitLab styles are accepted too.
    repo.write("a.yaml", &configmap("a", "three"));
    let third = repo.commit_and_push("third");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = http(
        controller.port,
        "POST",
        &path,
        &[("X-Gitea-Signature", good.clone())],
        body,
    );
    assert_eq!(status, 202);
    wait_for_revision(&api, "app", &third, Duration::from_secs(2)).await;
    repo.write("a.yaml", &configmap("a", "four"));
    let fourth = repo.commit_and_push("fourth");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = http(
        controller.port,
        "POST",
        &path,
        &[("X-Gitlab-Token", token.to_string())],
        body,
    );
    assert_eq!(status, 202);
    wait_for_revision(&api, "app", &fourth, Duration::from_secs(2)).await;

    // An oversized body is refused before anything else.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let (status, _) = http(
        controller.port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", format!("sha256={good}"))],
        &huge,
    );
    assert_eq!(status, 413);

    // A flood of forged requests is cut off by the rate limit (bursts of 20, then 5/s), and
    // none of them syncs anything.
    let before = api
        .get("app")
        .await
        .expect("GitSync")
        .status
        .expect("status");
    let statuses: Vec<u16> = (0..40)
        .map(|_| {
            http(
                controller.port,
                "POST",
                &path,
                &[("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))],
                b"{}",
            )
            .0
        })
        .collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 10 && statuses.iter().all(|s| *s == 401 || *s == 429),
        "forged requests get 401, then 429: {statuses:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api
        .get("app")
        .await
        .expect("GitSync")
        .status
        .expect("status");
    assert_eq!(
        after.last_sync_time, before.last_sync_time,
        "no sync on a bad signature"
    );
    assert!(
        !controller.log_text().contains(token),
        "the token is never logged"
    );
}

#[tokio::test]
async fn prometheus_scrapes_the_metrics_and_the_status_page_shows_the_revision() {
    let ns = TestNamespace::new("prom").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "one"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    assert_eq!(controller.get("/healthz").0, 200);
    let api = create_gitsync(&ns, "web", json!({"url": url, "interval": "1h"})).await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(30)).await;
    assert_eq!(controller.get("/readyz").0, 200);

    let (status, page) = controller.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains(&first),
        "status page shows the revision: {page}"
    );
    assert!(page.contains(&format!("{}/web", ns.name)));
    assert!(page.contains("Ready"));

    // A real Prometheus scrapes /metrics; PromQL finds the sync's runs.
    let dir = tempfile::tempdir().expect("tempdir");
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kubesync\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            controller.port
        ),
    )
    .expect("config");
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("promtool runs (testbed PATH)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus runs (testbed PATH)");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut prometheus);
    crate::support::wait_for_listener(guard.0, prom_port, "prometheus");
    let query = "/api/v1/query?query=kubesync_sync_runs_total";
    let answer = eventually(
        Duration::from_secs(30),
        "PromQL returns kubesync_sync_runs_total",
        || async {
            let (status, body) = http(prom_port, "GET", query, &[], b"");
            (status == 200 && body.contains(&format!("{}/web", ns.name))).then_some(body)
        },
    )
    .await;
    let value: serde_json::Value =
        serde_json::from_str(answer.trim_start_matches(|c: char| c != '{'))
            .unwrap_or_else(|e| panic!("{e}: {answer}"));
    let series = &value["data"]["result"][0];
    assert_eq!(series["metric"]["result"], "success", "{value}");
    assert_eq!(series["metric"]["sync"], format!("{}/web", ns.name));
    // Every series the controller exports is well-formed for promtool.
    let (_, metrics) = controller.get("/metrics");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let linted = lint.wait_with_output().expect("promtool output");
    // promtool 2.42 lints the classic text format: for an OpenMetrics counter it looks for HELP
    // under the `_total` name, which OpenMetrics puts on the family name. Any other finding fails.
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    let real: Vec<&str> = findings
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let Some(name) = l.strip_suffix(" no help text") else {
                return true;
            };
            let family = name.strip_suffix("_total").unwrap_or(name);
            !metrics.contains(&format!("# HELP {family} "))
        })
        .collect();
    assert!(real.is_empty(), "promtool check metrics: {real:#?}");
    drop(guard);
}

#[tokio::test]
async fn two_controllers_one_leads_and_the_other_takes_over_when_it_dies() {
    let ns = TestNamespace::new("lead").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "one"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let election = |id: &'static str| {
        ControllerProcess::start(
            &ns.name,
            &[
                "--leader-election",
                "--lease-namespace",
                &ns.name,
                "--identity",
                id,
            ],
        )
    };
    let mut one = election("one");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut two = election("two");
    let api = create_gitsync(&ns, "app", json!({"url": url, "interval": "2s"})).await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(30)).await;
    let leader = lease_holder(&ns).await.expect("a leader holds the Lease");
    assert_eq!(leader, "one", "the first replica leads");
    // Several intervals pass: only the leader syncs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(one.log_text().contains("sync due"));
    assert!(
        !two.log_text().contains("sync due"),
        "the follower never syncs:\n{}",
        two.log_text()
    );
    assert_eq!(
        two.get("/readyz").0,
        200,
        "a follower is ready (it serves webhooks and the page)"
    );

    // The leader dies mid-flight; the other takes over within 30 s and follows Git.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(one.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = one.child.wait();
    let killed = Instant::now();
    repo.write("a.yaml", &configmap("a", "two"));
    let second = repo.commit_and_push("second");
    eventually(
        Duration::from_secs(30),
        "the second replica takes the Lease",
        || async { (lease_holder(&ns).await.as_deref() == Some("two")).then_some(()) },
    )
    .await;
    let took = killed.elapsed();
    wait_for_revision(
        &api,
        "app",
        &second,
        Duration::from_secs(30)
            .saturating_sub(took)
            .max(Duration::from_secs(5)),
    )
    .await;
    eprintln!(
        "leader killed → new leader in {took:?}, new commit applied in {:?}",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "handover and sync within 30 s"
    );

    // SIGTERM: the new leader stops cleanly and gives the Lease up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(two.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let status = two.child.wait().expect("wait");
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {status:?}\n{}",
        two.log_text()
    );
    assert_eq!(lease_holder(&ns).await, None, "the Lease is released");
    assert!(two.log_text().contains("lease released"));
}

#[tokio::test]
async fn a_gitsync_cannot_do_more_than_its_service_account() {
    let ns = TestNamespace::new("sa").await;
    install_crd(&ns.client).await;
    // The ServiceAccount may manage ConfigMaps, nothing else.
    let apply = |yaml: String| {
        run_with_input(
            Command::new("kubectl").args(["apply", "-n", &ns.name, "-f", "-"]),
            &yaml,
        );
    };
    apply(format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: limited\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: configmaps\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get, list, watch, create, update, patch, delete]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: limited\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: configmaps\nsubjects:\n- kind: ServiceAccount\n  name: limited\n  namespace: {}\n",
        ns.name
    ));
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "one"));
    repo.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: sa-test-Pw9-never-shown\n",
    );
    repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": url, "interval": "1h", "serviceAccountName": "limited"}),
    )
    .await;
    let status = eventually(Duration::from_secs(30), "the sync fails", || async {
        let status = api.get("app").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(status)
    })
    .await;
    let error = status.last_error.clone().expect("lastError");
    assert!(error.contains("secret/db"), "names the object: {error}");
    assert!(error.contains("secret.yaml"), "names the file: {error}");
    assert!(
        error.to_lowercase().contains("forbidden"),
        "says forbidden: {error}"
    );
    assert!(
        error.contains("system:serviceaccount:"),
        "as the ServiceAccount: {error}"
    );
    assert_eq!(
        configmap_value(&ns, "a").await.as_deref(),
        Some("one"),
        "what it may do is done"
    );
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(secrets.get_opt("db").await.expect("get").is_none());
    assert!(!controller.log_text().contains("sa-test-Pw9-never-shown"));
    assert!(
        !serde_json::to_string(&status)
            .expect("json")
            .contains("sa-test-Pw9-never-shown")
    );
}

/// Between syncs the controller reads again the health of what the last sync left unhealthy (a
/// rollout still going), so status and gauge tell the truth long before the next interval; and a
/// deleted GitSync's metric series are forgotten.
#[tokio::test]
async fn health_is_read_again_between_syncs_and_a_deleted_gitsync_is_forgotten() {
    let ns = TestNamespace::new("ctl-health").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    // Pods become Ready 8 s after they start (the testbed's kwok stages): a rollout in progress.
    repo.write(
        "app/web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {testbed.kubesync.dev/ready-after: 8s}
    spec:
      containers: [{name: web, image: nginx:1.27}]
",
    );
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": url, "path": "app", "interval": "1h"}),
    )
    .await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    let unhealthy = || async {
        api.get("app")
            .await
            .ok()?
            .status?
            .summary
            .map(|s| s.unhealthy)
    };
    assert_eq!(
        unhealthy().await,
        Some(1),
        "the sync left the rollout in progress"
    );
    let series = format!("kubesync_unhealthy_objects{{sync=\"{}/app\"}}", ns.name);
    let started = Instant::now();
    eventually(
        Duration::from_secs(40),
        "the unhealthy count to drop without a sync",
        || async { (unhealthy().await == Some(0)).then_some(()) },
    )
    .await;
    eprintln!("rollout healthy in status after {:?}", started.elapsed());
    assert_eq!(controller.metric(&series), 0.0);
    let runs = format!(
        "kubesync_sync_runs_total{{sync=\"{}/app\",result=\"success\"}}",
        ns.name
    );
    assert_eq!(controller.metric(&runs), 1.0, "no second sync did it");

    api.delete("app", &Default::default())
        .await
        .expect("delete the GitSync");
    let label = format!("sync=\"{}/app\"", ns.name);
    eventually(
        Duration::from_secs(30),
        "the deleted GitSync's series to go",
        || async {
            let (_, body) = controller.get("/metrics");
            (!body.contains(&label)).then_some(())
        },
    )
    .await;
}
