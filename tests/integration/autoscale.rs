//! Replicas that yield to autoscalers: with a HorizontalPodAutoscaler (run by the testbed's
//! kube-controller-manager) or a KEDA ScaledObject (its CRD installed here; KEDA itself is
//! played by `kubectl scale`) targeting a Deployment of the set, kubesync leaves
//! `spec.replicas` alone; without one, Git's value is applied again. Also the general
//! `kubesync.dev/ignore-fields` annotation.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kubesync::sync::{Action, SyncReport};

use crate::support::manifests::{ManifestDir, result_of, sync_dir};
use crate::support::{TestNamespace, eventually, run, run_with_input};

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    \
         spec: {{containers: [{{name: c, image: registry.invalid/none:1}}]}}\n"
    )
}

const HPA: &str = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
    scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 4\n  maxReplicas: 6\n  \
    metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}}]\n";

const SCALED_OBJECT: &str = "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: web\nspec:\n  \
    scaleTargetRef: {name: web}\n  minReplicaCount: 1\n  triggers: [{type: cron, metadata: {timezone: UTC, start: 0 8 * * *, end: 0 18 * * *, desiredReplicas: \"5\"}}]\n";

/// The part of KEDA's CRD this test needs: the kind, served, any content.
const SCALED_OBJECT_CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  \
    name: scaledobjects.keda.sh\nspec:\n  group: keda.sh\n  scope: Namespaced\n  names: {kind: ScaledObject, plural: scaledobjects, singular: scaledobject}\n  \
    versions:\n  - name: v1alpha1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n";

struct Web {
    api: Api<Deployment>,
}

impl Web {
    async fn replicas_and_generation(&self) -> (Option<i32>, Option<i64>) {
        let d = self.api.get("web").await.expect("web");
        (d.spec.and_then(|s| s.replicas), d.metadata.generation)
    }

    async fn wait_for_replicas(&self, replicas: i32, why: &str) {
        eventually(Duration::from_secs(40), why, || async {
            (self.replicas_and_generation().await.0 == Some(replicas)).then_some(())
        })
        .await;
    }
}

fn web_line(ns: &TestNamespace) -> String {
    format!("deployment.apps/web -n {}", ns.name)
}

fn released_to(report: &SyncReport, ns: &TestNamespace) -> Option<String> {
    (report.released.iter())
        .find(|r| r.object == web_line(ns) && r.fields == ["/spec/replicas"])
        .map(|r| r.to.clone())
}

/// Five syncs in a row: the Deployment is never written, its replicas and generation stay.
async fn five_quiet_syncs(ns: &TestNamespace, dir: &ManifestDir, web: &Web, replicas: i32) {
    let before = web.replicas_and_generation().await;
    assert_eq!(before.0, Some(replicas));
    for round in 0..5 {
        let report = sync_dir(ns, dir.path(), |_| {}).await;
        assert!(report.succeeded(), "sync {round}: {:?}", report.errors);
        assert_eq!(
            result_of(&report, &web_line(ns)),
            &Action::Unchanged,
            "sync {round}"
        );
        assert_eq!(
            web.replicas_and_generation().await,
            before,
            "sync {round}: no flapping"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn replicas_yield_to_a_horizontal_pod_autoscaler_and_come_back_without_it() {
    let ns = TestNamespace::new("hpa").await;
    let web = Web {
        api: Api::namespaced(ns.client.clone(), &ns.name),
    };
    let dir = ManifestDir::new();
    dir.write("web.yaml", &deployment(2));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(web.replicas_and_generation().await.0, Some(2));

    // The HPA arrives: kubesync hands spec.replicas over, so leaving it does not reset it to 1.
    dir.write("hpa.yaml", HPA);
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(
        released_to(&report, &ns).as_deref(),
        Some("HorizontalPodAutoscaler/web")
    );
    assert_eq!(
        web.replicas_and_generation().await.0,
        Some(2),
        "handed over, not reset to the default"
    );
    web.wait_for_replicas(4, "the HPA scales web to its minimum of 4")
        .await;
    five_quiet_syncs(&ns, &dir, &web, 4).await;

    dir.remove("hpa.yaml");
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(released_to(&report, &ns), None);
    assert_eq!(
        web.replicas_and_generation().await.0,
        Some(2),
        "Git's 2 again"
    );
}

#[tokio::test]
async fn replicas_yield_to_a_keda_scaled_object() {
    let ns = TestNamespace::new("keda").await;
    run_with_input(
        Command::new("kubectl").args(["apply", "-f", "-"]),
        SCALED_OBJECT_CRD,
    );
    run(Command::new("kubectl").args([
        "wait",
        "--for=condition=Established",
        "crd/scaledobjects.keda.sh",
        "--timeout=30s",
    ]));
    let web = Web {
        api: Api::namespaced(ns.client.clone(), &ns.name),
    };
    let dir = ManifestDir::new();
    dir.write("web.yaml", &deployment(2));
    dir.write("scaledobject.yaml", SCALED_OBJECT);
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(
        released_to(&report, &ns).as_deref(),
        Some("ScaledObject/web")
    );
    // KEDA would scale through its HPA; here a person plays it.
    run(Command::new("kubectl").args([
        "-n",
        &ns.name,
        "scale",
        "deployment",
        "web",
        "--replicas=5",
    ]));
    five_quiet_syncs(&ns, &dir, &web, 5).await;

    dir.remove("scaledobject.yaml");
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert_eq!(
        web.replicas_and_generation().await.0,
        Some(2),
        "Git's 2 again"
    );
}

#[tokio::test]
async fn ignore_fields_leaves_named_fields_to_others_and_a_bad_pointer_fails_clearly() {
    let ns = TestNamespace::new("ignore-fields").await;
    let configmap = |annotation: &str, counter: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: state\n  annotations:\n    \
             kubesync.dev/ignore-fields: \"{annotation}\"\ndata:\n  counter: \"{counter}\"\n  fixed: a\n"
        )
    };
    let dir = ManifestDir::new();
    dir.write("state.yaml", &configmap("/data/counter", "0"));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let data = |cm: ConfigMap| cm.data.unwrap_or_default();
    assert_eq!(
        data(api.get("state").await.expect("state")).get("counter"),
        None,
        "a field left to others is not created by kubesync either"
    );
    run(Command::new("kubectl").args([
        "-n",
        &ns.name,
        "patch",
        "configmap",
        "state",
        "-p",
        r#"{"data":{"counter":"7","fixed":"b"}}"#,
    ]));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    let now = data(api.get("state").await.expect("state"));
    assert_eq!(
        now.get("counter").map(String::as_str),
        Some("7"),
        "left as the other set it"
    );
    assert_eq!(
        now.get("fixed").map(String::as_str),
        Some("a"),
        "Git's field corrected"
    );

    dir.write("state.yaml", &configmap("data.counter", "0"));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert!(!report.succeeded());
    let error = report.first_problem().unwrap_or_default();
    assert!(
        error.contains("state.yaml")
            && error.contains("\"data.counter\"")
            && error.contains("configmap/state"),
        "{error}"
    );
    let now = data(api.get("state").await.expect("state"));
    assert_eq!(
        now.get("counter").map(String::as_str),
        Some("7"),
        "nothing applied"
    );
}
