//! `dependsOn`: apps waits for infra (which holds the CRD of apps' custom resource) without a
//! failed sync, then converges as soon as infra is Ready; a cycle is reported.
use std::time::Duration;

use kubesync::crd::GitSync;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::{TestNamespace, eventually, run};

fn ready_reason(sync: &GitSync) -> Option<(String, String, String)> {
    let c = (sync.status.as_ref()?.conditions.iter()).find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn crd(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  \
         group: {group}\n  scope: Namespaced\n  names: {{kind: Widget, plural: widgets, singular: widget}}\n  versions:\n  \
         - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
    )
}

/// A repository with the Widget CRD in `infra/` and a Widget in `apps/`; returns the CRD's group.
fn layered_repo(ns: &TestNamespace) -> (String, GitRepo) {
    let group = format!("{}.example.dev", ns.name);
    let repo = GitRepo::new();
    repo.write("infra/crd.yaml", &crd(&group));
    repo.write(
        "apps/widget.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\nspec: {{size: 1}}\n"),
    );
    (group, repo)
}

/// The infra GitSync is created; apps, which waited, applies its Widget soon after.
async fn infra_arrives(
    ns: &TestNamespace,
    apps: &kube::Api<GitSync>,
    daemon: &GitDaemon,
    revision: &str,
    group: &str,
) {
    let spec = json!({"url": daemon.url(), "path": "infra", "interval": "1h"});
    create_gitsync(ns, "infra", spec).await;
    wait_for_revision(apps, "infra", revision, Duration::from_secs(60)).await;
    let waited = wait_for_revision(apps, "apps", revision, Duration::from_secs(20)).await;
    println!("apps applied {:.1} s after infra", waited.as_secs_f64());
    let widgets = format!("widgets.{group}");
    run(std::process::Command::new("kubectl").args(["-n", &ns.name, "get", &widgets, "w"]));
}

#[tokio::test]
async fn apps_wait_for_infra_without_failing_and_a_cycle_is_reported() {
    let ns = TestNamespace::new("depends").await;
    install_crd(&ns.client).await;
    let (group, repo) = layered_repo(&ns);
    let revision = repo.commit_and_push("infra and apps");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let apps = create_gitsync(
        &ns,
        "apps",
        json!({"url": daemon.url(), "path": "apps", "interval": "1h", "dependsOn": [{"name": "infra"}]}),
    )
    .await;
    let waiting = eventually(Duration::from_secs(20), "apps waits for infra", || async {
        let (status, reason, message) = ready_reason(&apps.get("apps").await.ok()?)?;
        (reason == "DependencyNotReady").then_some((status, message))
    })
    .await;
    assert_eq!(waiting.0, "False");
    assert!(
        waiting.1.contains(&format!("{}/infra", ns.name)),
        "{}",
        waiting.1
    );

    infra_arrives(&ns, &apps, &daemon, &revision, &group).await;
    let failures = format!(
        "kubesync_sync_runs_total{{sync=\"{}/apps\",result=\"failure\"}} ",
        ns.name
    );
    assert_eq!(
        controller.metric(&failures),
        0.0,
        "no failed sync counted while waiting"
    );

    for (name, other) in [("a", "b"), ("b", "a")] {
        let spec = json!({"url": daemon.url(), "path": "infra", "interval": "1h",
            "dependsOn": [{"name": other}]});
        create_gitsync(&ns, name, spec).await;
    }
    for name in ["a", "b"] {
        let message = eventually(Duration::from_secs(20), "a cycle is reported", || async {
            let (_, reason, message) = ready_reason(&apps.get(name).await.ok()?)?;
            (reason == "DependencyCycle").then_some(message)
        })
        .await;
        assert!(
            message.contains(&format!("{}/a", ns.name))
                && message.contains(&format!("{}/b", ns.name)),
            "{message}"
        );
    }
    run(std::process::Command::new("kubectl").args(["delete", "crd", &format!("widgets.{group}")]));
}

#[tokio::test]
async fn custom_resources_wait_for_their_crd_without_failing_and_apply_once_it_is_there() {
    let ns = TestNamespace::new("crd-wait").await;
    install_crd(&ns.client).await;
    let (group, repo) = layered_repo(&ns);
    repo.write(
        "apps/config.yaml",
        &crate::support::manifests::configmap("settings", "x"),
    );
    let revision = repo.commit_and_push("apps before their CRD");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let apps = create_gitsync(
        &ns,
        "apps",
        json!({"url": daemon.url(), "path": "apps", "interval": "1h"}),
    )
    .await;
    let status = eventually(
        Duration::from_secs(30),
        "apps waits for the Widget CRD",
        || async {
            let sync = apps.get("apps").await.ok()?;
            let (_, reason, _) = ready_reason(&sync)?;
            (reason == "WaitingForCRD").then_some(sync.status?)
        },
    )
    .await;
    assert_eq!(
        status.waiting_for_crd.len(),
        1,
        "{:?}",
        status.waiting_for_crd
    );
    assert!(
        status.waiting_for_crd[0].contains("widget.yaml"),
        "{:?}",
        status.waiting_for_crd
    );
    assert!(status.waiting_for_crd_since.is_some());
    assert_ne!(
        status.last_applied_revision.as_deref(),
        Some(revision.as_str()),
        "not all applied"
    );
    run(std::process::Command::new("kubectl").args([
        "-n",
        &ns.name,
        "get",
        "configmap",
        "settings",
    ]));
    // A few retries later: still waiting, still no failure.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let failures = format!(
        "kubesync_sync_runs_total{{sync=\"{}/apps\",result=\"failure\"}} ",
        ns.name
    );
    assert_eq!(controller.metric(&failures), 0.0, "waiting is not failing");
    let blocked = format!(
        "kubesync_prune_blocked_total{{sync=\"{}/apps\",reason=\"waiting_for_crd\"}} ",
        ns.name
    );
    assert!(controller.metric(&blocked) >= 2.0, "retried, never pruning");

    infra_arrives(&ns, &apps, &daemon, &revision, &group).await;
    let status = apps
        .get("apps")
        .await
        .expect("apps")
        .status
        .expect("status");
    assert!(status.waiting_for_crd.is_empty() && status.waiting_for_crd_since.is_none());
    assert_eq!(
        ready_reason(&apps.get("apps").await.expect("apps"))
            .map(|r| r.0)
            .as_deref(),
        Some("True")
    );
    assert_eq!(controller.metric(&failures), 0.0);
    run(std::process::Command::new("kubectl").args(["delete", "crd", &format!("widgets.{group}")]));
}
