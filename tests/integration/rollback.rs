//! Automatic rollback: a commit whose Deployment never becomes ready (kwok's `not-ready` Pod
//! stage) is rolled back to the last healthy revision within timeout + one interval; the status
//! and an Event name both revisions; the bad revision is not retried until a new commit; what it
//! added is not pruned.
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kubesync::crd::{GitSync, short_revision};
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::receiver::{Answer, Receiver};
use crate::support::{TestNamespace, eventually};

fn deployment(image: &str, pod: Option<&str>) -> String {
    let annotations = pod
        .map(|p| format!("      annotations: {{testbed.kubesync.dev/pod: {p}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  \
         selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata:\n      labels: {{app: web}}\n{annotations}    \
         spec: {{containers: [{{name: c, image: \"{image}\"}}]}}\n"
    )
}

async fn image(api: &Api<Deployment>) -> Option<String> {
    let d = api.get("web").await.ok()?;
    d.spec?.template.spec?.containers.first()?.image.clone()
}

fn ready_condition(sync: &GitSync) -> Option<(String, String, String)> {
    let status = sync.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn an_unhealthy_revision_is_rolled_back_to_the_last_healthy_one_and_held_back() {
    let ns = TestNamespace::new("rollback").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("app/web.yaml", &deployment("web:1", None));
    let good = repo.commit_and_push("web 1");
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let (timeout, interval) = (Duration::from_secs(8), Duration::from_secs(4));
    // A receiver of the rollback's notification (and of the recovery after the fix).
    let receiver = Receiver::start(Answer::Statuses(vec![]));
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "alerts"}, "stringData": {"address": receiver.url("/hook")}}),
    )
    .expect("Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("Secret");
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": daemon.url(), "path": "app", "interval": "4s", "timeout": "8s",
               "rollback": {"enabled": true},
               "notify": [{"provider": "generic", "secretRef": {"name": "alerts"}}]}),
    )
    .await;
    wait_for_revision(&api, "app", &good, Duration::from_secs(60)).await;
    let status = api
        .get("app")
        .await
        .expect("GitSync")
        .status
        .expect("status");
    assert_eq!(status.last_healthy_revision.as_deref(), Some(good.as_str()));

    repo.write("app/web.yaml", &deployment("web:2", Some("not-ready")));
    repo.write("app/added.yaml", &configmap("added-by-bad", "x"));
    let bad = repo.commit_and_push("web 2, which never becomes ready");
    let pushed = Instant::now();
    let rolled = eventually(
        timeout + interval + Duration::from_secs(20),
        "the bad revision is rolled back",
        || async {
            let sync = api.get("app").await.ok()?;
            let rolled = sync.status.as_ref()?.rolled_back.clone()?;
            Some((sync, rolled))
        },
    )
    .await;
    let took = pushed.elapsed();
    // The push is seen at the next interval (±10 %), the wait ends at the timeout, then one
    // sync of the good revision: allow 3 s for the two syncs themselves.
    let bound = timeout + interval * 11 / 10 + Duration::from_secs(3);
    assert!(
        took < bound,
        "rolled back after {took:?}, more than {bound:?}"
    );
    let (sync, rolled) = rolled;
    assert_eq!(
        (rolled.from.as_str(), rolled.to.as_str()),
        (bad.as_str(), good.as_str())
    );
    let (ready, reason, message) = ready_condition(&sync).expect("Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "RolledBack"),
        "{message}"
    );
    assert!(
        message.contains(short_revision(&bad)) && message.contains(short_revision(&good)),
        "{message}"
    );
    let status = sync.status.expect("status");
    assert_eq!(status.last_applied_revision.as_deref(), Some(good.as_str()));
    assert_eq!(
        status.last_attempted_revision.as_deref(),
        Some(bad.as_str())
    );
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    assert_eq!(
        image(&deployments).await.as_deref(),
        Some("web:1"),
        "the good revision again"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        configmaps
            .get_opt("added-by-bad")
            .await
            .expect("get")
            .is_some(),
        "what the bad revision added is not pruned by the rollback"
    );
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let list = events.list(&ListParams::default()).await.expect("events");
    let event = (list.items.iter())
        .find(|e| e.reason.as_deref() == Some("RolledBack"))
        .expect("a RolledBack Event");
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(short_revision(&bad))
    );
    println!(
        "push to rollback: {:.1} s (timeout {timeout:?}, interval {interval:?})",
        took.as_secs_f64()
    );
    // One notification: rolled back (not also "failed" for the unhealthy revision).
    let told = receiver.wait_for(1, Duration::from_secs(20));
    let body = told[0].json();
    assert_eq!(body["event"], "rolledBack", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(short_revision(&bad)) && message.contains(short_revision(&good)),
        "{message}"
    );

    // Three intervals: the bad revision is not applied again.
    let generation = deployments
        .get("web")
        .await
        .expect("web")
        .metadata
        .generation;
    tokio::time::sleep(interval * 3).await;
    let web = deployments.get("web").await.expect("web");
    assert_eq!(
        web.metadata.generation, generation,
        "held back, not retried"
    );
    assert_eq!(image(&deployments).await.as_deref(), Some("web:1"));

    // A new commit is synced as usual and clears the rollback.
    repo.write("app/web.yaml", &deployment("web:3", None));
    repo.remove("app/added.yaml");
    let fixed = repo.commit_and_push("web 3");
    wait_for_revision(&api, "app", &fixed, Duration::from_secs(40)).await;
    let sync = api.get("app").await.expect("GitSync");
    assert_eq!(ready_condition(&sync).map(|c| c.0).as_deref(), Some("True"));
    assert_eq!(sync.status.expect("status").rolled_back, None);
    assert_eq!(image(&deployments).await.as_deref(), Some("web:3"));
    let told = receiver.wait_for(2, Duration::from_secs(20));
    assert_eq!(
        told.len(),
        2,
        "{:?}",
        told.iter().map(|t| t.text()).collect::<Vec<_>>()
    );
    assert_eq!(told[1].json()["event"], "recovered");
    eventually(
        Duration::from_secs(10),
        "the next good revision prunes it",
        || async {
            configmaps
                .get_opt("added-by-bad")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}
