//! Event-driven sync: the controller watches what it applied. A change made in the cluster is
//! undone without waiting for the interval, and an interval with nothing to do sends no LIST and
//! no apply (counted by the API server itself).
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::{configmap, deployment};
use crate::support::{TestNamespace, eventually, run};

fn kubectl(ns: &str, args: &[&str]) -> String {
    run(Command::new("kubectl").args(args).args(["-n", ns]))
}

async fn value_of(api: &Api<ConfigMap>, name: &str) -> Option<String> {
    api.get_opt(name).await.ok()??.data?.get("key").cloned()
}

/// Waits until the controller watches `count` objects of the GitSync `ns/name`.
async fn wait_watched(controller: &ControllerProcess, ns: &str, name: &str, count: usize) {
    let series = format!("kubesync_watched_objects{{sync=\"{ns}/{name}\"}} ");
    eventually(
        Duration::from_secs(30),
        "the controller watches the set",
        || {
            let watched = controller.metric(&series);
            async move { (watched == count as f64).then_some(()) }
        },
    )
    .await;
}

/// Changes one object in the cluster with `edit`, then waits until `check` says it is back;
/// returns how long that took.
async fn undone<F, Fut>(what: &str, edit: impl FnOnce(), check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let started = Instant::now();
    edit();
    eventually(Duration::from_secs(10), what, check).await;
    started.elapsed()
}

#[tokio::test]
async fn a_change_made_in_the_cluster_is_undone_at_once_without_a_sync() {
    let ns = TestNamespace::new("drift").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("app/a.yaml", &configmap("a", "git"));
    repo.write("app/b.yaml", &configmap("b", "git"));
    repo.write("app/web.yaml", &deployment("web", 1));
    let revision = repo.commit_and_push("three objects");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    // An hour: anything undone in this test is undone by the watches, not by an interval.
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": daemon.url(), "path": "app", "interval": "1h"}),
    )
    .await;
    wait_for_revision(&api, "app", &revision, Duration::from_secs(60)).await;
    wait_watched(&controller, &ns.name, "app", 3).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);

    let mut took = Vec::new();
    took.push(
        undone(
            "the hand-edited value is Git's again",
            || {
                kubectl(
                    &ns.name,
                    &[
                        "patch",
                        "configmap",
                        "a",
                        "-p",
                        r#"{"data":{"key":"hand"}}"#,
                    ],
                );
            },
            || async { (value_of(&configmaps, "a").await.as_deref() == Some("git")).then_some(()) },
        )
        .await,
    );
    took.push(
        undone(
            "the scaled Deployment has Git's replicas again",
            || {
                kubectl(&ns.name, &["scale", "deployment", "web", "--replicas=3"]);
            },
            || async {
                let d = deployments.get("web").await.ok()?;
                (d.spec?.replicas == Some(1)).then_some(())
            },
        )
        .await,
    );
    took.push(
        undone(
            "the deleted ConfigMap is back",
            || {
                kubectl(&ns.name, &["delete", "configmap", "b"]);
            },
            || async { (value_of(&configmaps, "b").await.as_deref() == Some("git")).then_some(()) },
        )
        .await,
    );
    took.push(
        undone(
            "the removed ApplySet label is back",
            || {
                let label = "applyset.kubernetes.io/part-of-";
                kubectl(&ns.name, &["label", "configmap", "a", label]);
            },
            || async {
                let labels = configmaps.get("a").await.ok()?.metadata.labels?;
                labels
                    .contains_key("applyset.kubernetes.io/part-of")
                    .then_some(())
            },
        )
        .await,
    );
    eprintln!("drift undone after {took:?}");

    // A status update (what a rollout does all the time) is not drift: no repair follows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let repairs = |c: &ControllerProcess| {
        c.metric(&format!(
            "kubesync_drift_repairs_total{{sync=\"{}/app\"}} ",
            ns.name
        ))
    };
    let before = repairs(&controller);
    assert!(before >= 4.0, "one repair per change at least: {before}");
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1, "conditions": []}})),
        )
        .await
        .expect("status patch");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        repairs(&controller),
        before,
        "no repair after a status update"
    );

    // None of this was a sync: one entry in the history, and the repairs are Events.
    let sync = api.get("app").await.expect("get");
    assert_eq!(sync.status.expect("status").history.len(), 1);
    let corrected = controller.metric(&format!(
        "kubesync_drift_corrected_total{{sync=\"{}/app\"}} ",
        ns.name
    ));
    assert!(corrected >= 4.0, "drift corrected: {corrected}");
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let events = events.list(&ListParams::default()).await.expect("events");
    let notes: Vec<String> = (events.items.iter())
        .filter(|e| e.reason.as_deref() == Some("DriftCorrected"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("configmap/b ")),
        "an Event names the re-created object: {notes:?}"
    );
}

/// `apiserver_request_total` of one resource of one group, by verb, from the API server's own
/// metrics.
fn requests(group: &str, resource: &str, verb: &str) -> f64 {
    let metrics = run(Command::new("kubectl").args(["get", "--raw", "/metrics"]));
    let group = format!("group=\"{group}\"");
    let resource = format!("resource=\"{resource}\"");
    let verb = format!("verb=\"{verb}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&group) && l.contains(&resource) && l.contains(&verb))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn widget(name: &str, size: u32) -> String {
    format!(
        "apiVersion: WIDGETS/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n"
    )
}

#[tokio::test]
async fn an_idle_interval_sends_no_list_and_no_apply_and_a_new_commit_is_still_followed() {
    let ns = TestNamespace::new("idle").await;
    install_crd(&ns.client).await;
    // A kind of its own, so that no other test's requests are counted; cluster-scoped, because
    // the namespace controller LISTs every namespaced kind whenever another test's namespace
    // is deleted.
    let group = format!("{}.kubesync.test", ns.name);
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    });
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(ns.client.clone());
    crds.patch(
        &format!("widgets.{group}"),
        &PatchParams::apply("kubesync-tests"),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD");
    let _crd_cleanup = CrdCleanup(format!("widgets.{group}"));
    run(Command::new("kubectl").args([
        "wait",
        "--for=condition=Established",
        &format!("crd/widgets.{group}"),
        "--timeout=60s",
    ]));
    let established = Instant::now();

    let repo = GitRepo::new();
    for i in 0..5 {
        repo.write(
            &format!("w{i}.yaml"),
            &widget(&format!("w{i}"), 1).replace("WIDGETS", &group),
        );
    }
    let first = repo.commit_and_push("five widgets");
    let daemon = GitDaemon::start(repo.root.path());
    // Never a full sync on an interval in this test, unless something is due.
    let controller = ControllerProcess::start(&ns.name, &["--full-sync-every", "1000"]);
    let api = create_gitsync(&ns, "w", json!({"url": daemon.url(), "interval": "2s"})).await;
    wait_for_revision(&api, "w", &first, Duration::from_secs(60)).await;
    wait_watched(&controller, &ns.name, "w", 5).await;
    let idle = |c: &ControllerProcess| {
        c.metric(&format!(
            "kubesync_idle_intervals_total{{sync=\"{}/w\"}} ",
            ns.name
        ))
    };
    // kube-controller-manager's garbage collector and quota controller find a new kind within
    // 30 s (their discovery period) and then list it once: those LISTs are not kubesync's.
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(established.elapsed())).await;
    // The first idle interval comes after the watches' first list.
    let idle0 = eventually(Duration::from_secs(20), "a first idle interval", || {
        let n = idle(&controller);
        async move { (n >= 1.0).then_some(n) }
    })
    .await;
    let lists = requests(&group, "widgets", "LIST");
    let applies = requests(&group, "widgets", "APPLY");
    let watches = requests(&group, "widgets", "WATCH");
    assert!(
        lists >= 2.0,
        "the first sync listed its set, the watch its objects: {lists}"
    );
    eventually(Duration::from_secs(30), "three more idle intervals", || {
        let n = idle(&controller);
        async move { (n >= idle0 + 3.0).then_some(()) }
    })
    .await;
    assert_eq!(
        requests(&group, "widgets", "LIST"),
        lists,
        "no LIST in idle intervals"
    );
    assert_eq!(
        requests(&group, "widgets", "APPLY"),
        applies,
        "no apply in idle intervals"
    );
    assert_eq!(
        requests(&group, "widgets", "WATCH"),
        watches,
        "the watch was not restarted"
    );
    let sync = api.get("w").await.expect("get");
    assert_eq!(sync.status.expect("status").history.len(), 1, "no sync ran");

    // A new commit is found by the next interval's fetch and synced in full: the same counters
    // see its LIST and its apply.
    repo.write("w0.yaml", &widget("w0", 2).replace("WIDGETS", &group));
    let second = repo.commit_and_push("w0 grows");
    wait_for_revision(&api, "w", &second, Duration::from_secs(30)).await;
    assert!(
        requests(&group, "widgets", "LIST") > lists,
        "the full sync listed the set"
    );
    assert!(
        requests(&group, "widgets", "APPLY") > applies,
        "and applied w0"
    );
}

/// Deletes a test's CRD when the test ends.
struct CrdCleanup(String);

impl Drop for CrdCleanup {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "crd", &self.0, "--wait=false"])
            .output();
    }
}
