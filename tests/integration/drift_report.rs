//! `drift: report`: a change made in the cluster is left as it is and reported (the sync's
//! result, the GitSync's status, an Event, a metric); switching to `correct` undoes it.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kubesync::drift::DriftPolicy;
use kubesync::sync::Action;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::{ManifestDir, deployment, result_of, sync_dir};
use crate::support::{TestNamespace, eventually, run};

fn scale(ns: &str, replicas: u32) {
    let replicas = format!("--replicas={replicas}");
    run(Command::new("kubectl").args(["-n", ns, "scale", "deployment", "web", &replicas]));
}

async fn replicas(api: &Api<Deployment>) -> Option<i32> {
    api.get("web").await.ok()?.spec?.replicas
}

#[tokio::test]
async fn the_engine_reports_drift_without_writing_and_corrects_it_when_asked() {
    let ns = TestNamespace::new("drift-report").await;
    let dir = ManifestDir::new();
    dir.write("web.yaml", &deployment("web", 1));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    scale(&ns.name, 3);
    let before = deployments.get("web").await.expect("web");

    let report = sync_dir(&ns, dir.path(), |o| o.apply.drift = DriftPolicy::Report).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    let object = format!("deployment.apps/web -n {}", ns.name);
    assert_eq!(
        result_of(&report, &object),
        &Action::Drifted("spec.replicas".into())
    );
    assert_eq!(report.summary.drifted, 1);
    assert_eq!(
        report.summary.managed, 1,
        "a drifted object stays in the set"
    );
    let after = deployments.get("web").await.expect("web");
    assert_eq!(replicas(&deployments).await, Some(3), "left as it is");
    assert_eq!(
        before.metadata.generation, after.metadata.generation,
        "report mode writes nothing"
    );
    let managers = |d: &Deployment| {
        let entries = d.metadata.managed_fields.clone().unwrap_or_default();
        (entries.into_iter())
            .filter(|m| m.manager.as_deref() == Some("kubesync"))
            .map(|m| (m.operation, m.time))
            .collect::<Vec<_>>()
    };
    assert_eq!(managers(&before), managers(&after), "no apply was sent");

    // Git changed: that is not drift, it is applied in either mode.
    dir.write("web.yaml", &deployment("web", 2));
    let report = sync_dir(&ns, dir.path(), |o| o.apply.drift = DriftPolicy::Report).await;
    assert_eq!(result_of(&report, &object), &Action::Configured);
    assert_eq!(replicas(&deployments).await, Some(2));

    scale(&ns.name, 4);
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert_eq!(result_of(&report, &object), &Action::Configured);
    assert!(report.objects[0].drift_corrected);
    assert_eq!(
        replicas(&deployments).await,
        Some(2),
        "correct mode undoes it"
    );
}

#[tokio::test]
async fn the_controller_reports_drift_in_status_events_and_metrics_until_told_to_correct() {
    let ns = TestNamespace::new("drift-report-ctl").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("app/web.yaml", &deployment("web", 1));
    let revision = repo.commit_and_push("web");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let spec = json!({"url": daemon.url(), "path": "app", "interval": "1h", "drift": "report"});
    let api = create_gitsync(&ns, "app", spec).await;
    wait_for_revision(&api, "app", &revision, Duration::from_secs(60)).await;
    let watched = format!("kubesync_watched_objects{{sync=\"{}/app\"}} ", ns.name);
    eventually(Duration::from_secs(30), "the set is watched", || {
        let n = controller.metric(&watched);
        async move { (n == 1.0).then_some(()) }
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);

    scale(&ns.name, 3);
    let object = format!("deployment.apps/web -n {}", ns.name);
    let drift = eventually(
        Duration::from_secs(20),
        "status.drift lists web",
        || async {
            let status = api.get("app").await.ok()?.status?;
            (status.drift.len() == 1).then_some(status)
        },
    )
    .await;
    assert_eq!(drift.drift[0].object, object);
    assert_eq!(drift.drift[0].fields, "spec.replicas");
    assert_eq!(drift.summary.map(|s| s.drifted), Some(1));
    let series = format!("kubesync_drifted_objects{{sync=\"{}/app\"}} ", ns.name);
    assert_eq!(controller.metric(&series), 1.0);
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let event = eventually(Duration::from_secs(10), "a DriftDetected Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DriftDetected"))
    })
    .await;
    let note = event.message.unwrap_or_default();
    assert!(
        note.contains(&object) && note.contains("spec.replicas"),
        "{note}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&deployments).await,
        Some(3),
        "the drift is left as it is"
    );

    let patch = json!({"spec": {"drift": "correct"}});
    api.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("switch to correct");
    eventually(
        Duration::from_secs(30),
        "Git's replicas are back",
        || async { (replicas(&deployments).await == Some(1)).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(10), "status.drift is empty", || async {
        let status = api.get("app").await.ok()?.status?;
        status.drift.is_empty().then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the metric says 0", || {
        let n = controller.metric(&series);
        async move { (n == 0.0).then_some(()) }
    })
    .await;
}
