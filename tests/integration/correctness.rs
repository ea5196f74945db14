//! The engine's correctness on the testbed, one test per finding of the correctness review:
//! one owner per object, nothing outside Git lost, immutable fields, no orphans, only our own
//! parents, honest health, diff previews, forgetting deleted GitSyncs, prune order.
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, ResourceExt};
use kubesync::sync::Action;
use serde_json::json;

use crate::support::manifests::{ManifestDir, configmap, result_of, sync_dir};
use crate::support::{TestNamespace, eventually, output_text, sh, unique_name};

const PART_OF: &str = "applyset.kubernetes.io/part-of";

fn kubesync(args: &[&str], repo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(&args[..1])
        .arg("--repo")
        .arg(repo)
        .args(&args[1..])
        .output()
        .expect("run kubesync")
}

fn cm_key(ns: &TestNamespace, name: &str) -> String {
    format!("configmap/{name} -n {}", ns.name)
}

/// Finding 1: two sets that declare one object. The second fails on it, naming both sets, and
/// writes nothing; an explicit `kubesync.dev/adopt` takes it over; a manifest carrying an ApplySet
/// label is refused.
#[tokio::test]
async fn an_object_belongs_to_one_set_and_moves_only_when_adopted() {
    let ns = TestNamespace::new("own").await;
    let first = ManifestDir::new();
    first.write("shared.yaml", &configmap("shared", "from-first"));
    let second = ManifestDir::new();
    second.write("shared.yaml", &configmap("shared", "from-second"));
    let a = sync_dir(&ns, first.path(), |o| o.target.name = "first".into()).await;
    assert!(a.succeeded(), "{:?}", a.errors);
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let owner = |cm: ConfigMap| cm.labels().get(PART_OF).cloned().unwrap_or_default();
    let first_id = owner(configmaps.get("shared").await.expect("shared"));

    let b = sync_dir(&ns, second.path(), |o| o.target.name = "second".into()).await;
    assert!(!b.succeeded(), "the second set may not take the object");
    let Action::Failed(reason) = result_of(&b, &cm_key(&ns, "shared")) else {
        panic!("shared failed in the second set: {:#?}", b.objects)
    };
    let second_id = kubesync::applyset::Parent::secret("second", &ns.name).id();
    assert!(
        reason.contains(&first_id)
            && reason.contains(&second_id)
            && reason.contains("kubesync.dev/adopt"),
        "{reason}"
    );
    let live = configmaps.get("shared").await.expect("shared");
    assert_eq!(owner(live.clone()), first_id, "nothing written");
    assert_eq!(live.data.expect("data")["key"], "from-first");
    assert!(b.prune_blocked.is_some());

    // Adopting is explicit.
    second.write(
        "shared.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  annotations: {kubesync.dev/adopt: \"true\"}\ndata:\n  key: from-second\n",
    );
    let adopted = sync_dir(&ns, second.path(), |o| o.target.name = "second".into()).await;
    assert!(adopted.succeeded(), "{:?}", adopted.errors);
    assert_eq!(
        result_of(&adopted, &cm_key(&ns, "shared")),
        &Action::Adopted
    );
    assert_eq!(adopted.summary.adopted, 1);
    assert_eq!(
        owner(configmaps.get("shared").await.expect("shared")),
        second_id
    );
    // The first set now fails on it instead of taking it back, and never prunes it.
    let again = sync_dir(&ns, first.path(), |o| o.target.name = "first".into()).await;
    assert!(matches!(
        result_of(&again, &cm_key(&ns, "shared")),
        Action::Failed(_)
    ));
    first.remove("shared.yaml");
    first.write("other.yaml", &configmap("other", "x"));
    let removed = sync_dir(&ns, first.path(), |o| o.target.name = "first".into()).await;
    assert!(removed.succeeded(), "{:?}", removed.errors);
    assert!(
        configmaps.get_opt("shared").await.expect("get").is_some(),
        "not pruned by a set it left"
    );

    // kubectl's own ApplySets are sets too: an object `kubectl apply --applyset` holds is not
    // taken either.
    sh(&format!(
        "KUBECTL_APPLYSET=true kubectl apply --server-side --prune --applyset=secret/by-kubectl \
           -n {} -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {{name: kubectls}}
data: {{key: from-kubectl}}
YAML",
        ns.name
    ));
    let kubectl_id = owner(configmaps.get("kubectls").await.expect("kubectls"));
    assert!(kubectl_id.starts_with("applyset-"), "{kubectl_id}");
    first.write("kubectls.yaml", &configmap("kubectls", "from-first"));
    let taken = sync_dir(&ns, first.path(), |o| o.target.name = "first".into()).await;
    let Action::Failed(reason) = result_of(&taken, &cm_key(&ns, "kubectls")) else {
        panic!("{:#?}", taken.objects)
    };
    assert!(reason.contains(&kubectl_id), "{reason}");
    assert_eq!(
        configmaps
            .get("kubectls")
            .await
            .expect("kubectls")
            .data
            .expect("data")["key"],
        "from-kubectl"
    );
    first.remove("kubectls.yaml");

    // A manifest that carries an ApplySet label itself is refused before anything is applied.
    let labelled = ManifestDir::new();
    labelled.write(
        "bad.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sneaky\n  labels: {{{PART_OF}: {first_id}}}\n"
        ),
    );
    let refused = sync_dir(&ns, labelled.path(), |o| o.target.name = "third".into()).await;
    assert!(!refused.succeeded());
    assert!(
        refused
            .error_messages()
            .iter()
            .any(|e| e.contains("bad.yaml") && e.contains(PART_OF)),
        "{:?}",
        refused.errors
    );
    assert!(configmaps.get_opt("sneaky").await.expect("get").is_none());
}

fn web_deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
"
    )
}

/// Finding 2: fields that `kubectl edit`, `kubectl apply --server-side`, `kubectl label`,
/// `kubectl annotate` and `kubectl create` set, and Git does not, survive the next sync; a field
/// Git sets, edited by hand, is corrected.
#[tokio::test]
async fn fields_git_does_not_set_are_kept_and_fields_it_sets_are_corrected() {
    let ns = TestNamespace::new("keep").await;
    let repo = ManifestDir::new();
    repo.write("web.yaml", &web_deployment(2));
    // Created with kubectl before Git declared it.
    sh(&format!(
        "kubectl -n {} create configmap made-by-hand --from-literal=key=x --from-literal=extra=keep-me >/dev/null",
        ns.name
    ));
    repo.write("cm.yaml", &configmap("made-by-hand", "x"));
    let first = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(first.succeeded(), "{:?}", first.errors);

    // kubectl edit, non-interactively: the editor is a sed script.
    let editor_dir = tempfile::tempdir().expect("tempdir");
    let editor = editor_dir.path().join("editor");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i \
         -e 's/^  progressDeadlineSeconds: 600$/  minReadySeconds: 7\\n  progressDeadlineSeconds: 600/' \
         -e 's/^  replicas: 2$/  replicas: 5/' \
         -e 's/^  annotations:$/  annotations:\\n    edited-by: hand/' \
         -e 's/^      - image: nginx:1.27$/      - env: [{name: EXTRA, value: \"1\"}]\\n        image: nginx:1.27/' \
         \"$1\"\n",
    )
    .expect("write editor");
    sh(&format!(
        "chmod +x {editor}
         KUBE_EDITOR={editor} kubectl -n {ns} edit deployment/web >/dev/null
         kubectl -n {ns} label deployment/web team=home >/dev/null
         kubectl -n {ns} annotate deployment/web note=by-annotate >/dev/null
         kubectl -n {ns} apply --server-side -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {{ssa-by: kubectl}}
YAML",
        editor = editor.display(),
        ns = ns.name
    ));
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let edited = deployments.get("web").await.expect("web");
    let spec = edited.spec.clone().expect("spec");
    assert_eq!(spec.min_ready_seconds, Some(7), "the edit took");
    assert_eq!(spec.replicas, Some(5));

    let second = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(second.succeeded(), "{:?}", second.errors);
    assert_eq!(second.summary.drift_corrected, 1, "{:#?}", second.objects);
    let web = deployments.get("web").await.expect("web");
    let spec = web.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(2), "a field Git sets is corrected");
    assert_eq!(
        spec.min_ready_seconds,
        Some(7),
        "kubectl edit's field stays"
    );
    let env = spec.template.spec.expect("pod").containers[0].env.clone();
    assert_eq!(
        env.map(|e| e.iter().map(|v| v.name.clone()).collect::<Vec<_>>()),
        Some(vec!["EXTRA".to_string()]),
        "kubectl edit's env var stays"
    );
    for (key, value) in [
        ("edited-by", "hand"),
        ("note", "by-annotate"),
        ("ssa-by", "kubectl"),
    ] {
        assert_eq!(
            web.annotations().get(key).map(String::as_str),
            Some(value),
            "annotation {key} stays"
        );
    }
    assert_eq!(web.labels().get("team").map(String::as_str), Some("home"));
    let cm = Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
        .get("made-by-hand")
        .await
        .expect("cm");
    assert_eq!(
        cm.data.expect("data").get("extra").map(String::as_str),
        Some("keep-me"),
        "kubectl create's fields are not taken over"
    );
    // And a third sync has nothing to do.
    let third = sync_dir(&ns, repo.path(), |_| {}).await;
    assert_eq!(third.summary.unchanged, 2, "{:#?}", third.objects);
}

fn service(cluster_ip: &str, recreate: bool) -> String {
    let annotations = if recreate {
        "\n  annotations: {kubesync.dev/recreate: \"true\"}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db{annotations}\nspec:\n  clusterIP: {cluster_ip}\n  selector: {{app: db}}\n  ports: [{{port: 5432}}]\n"
    )
}

fn statefulset(size: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: pg
  annotations: {{kubesync.dev/recreate: \"true\"}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: pg, image: postgres:16}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: {size}}}}}
"
    )
}

/// Finding 3: a Service's clusterIP and a StatefulSet's volumeClaimTemplates cannot change in
/// place. Without the annotation the error names the field and suggests it; with it the object
/// is re-created and reported so.
#[tokio::test]
async fn immutable_fields_are_named_and_recreated_on_request() {
    let ns = TestNamespace::new("immut").await;
    // From the lower band of the Service range, which the allocator keeps for fixed IPs.
    let low = 20 + (std::process::id() % 100) * 2;
    let (ip, next_ip) = (format!("10.43.0.{low}"), format!("10.43.0.{}", low + 1));
    let repo = ManifestDir::new();
    repo.write("svc.yaml", &service(&ip, false))
        .write("sts.yaml", &statefulset("1Gi"));
    let first = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(first.succeeded(), "{:?}", first.errors);

    repo.write("svc.yaml", &service(&next_ip, false));
    let refused = sync_dir(&ns, repo.path(), |_| {}).await;
    let Action::Failed(reason) = result_of(&refused, &format!("service/db -n {}", ns.name)) else {
        panic!("{:#?}", refused.objects)
    };
    assert!(
        reason.contains("spec.clusterIP") && reason.contains("kubesync.dev/recreate"),
        "{reason}"
    );

    repo.write("svc.yaml", &service(&next_ip, true))
        .write("sts.yaml", &statefulset("2Gi"));
    let recreated = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(recreated.succeeded(), "{:?}", recreated.errors);
    assert_eq!(
        result_of(&recreated, &format!("service/db -n {}", ns.name)),
        &Action::Recreated
    );
    assert_eq!(
        result_of(&recreated, &format!("statefulset.apps/pg -n {}", ns.name)),
        &Action::Recreated
    );
    assert_eq!(recreated.summary.recreated, 2);
    let svc = Api::<Service>::namespaced(ns.client.clone(), &ns.name)
        .get("db")
        .await
        .expect("svc");
    assert_eq!(
        svc.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some(next_ip.as_str())
    );
}

const GADGET_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: NAME}
spec:
  group: GROUP
  scope: Namespaced
  names: {kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
";

fn gadget_crd(group: &str) -> String {
    GADGET_CRD
        .replace("NAME", &format!("gadgets.{group}"))
        .replace("GROUP", group)
}

fn gadget(group: &str, namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: {group}/v1\nkind: Gadget\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{size: 1}}\n"
    )
}

fn gadget_api(client: &kube::Client, group: &str, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

async fn delete_crd(client: &kube::Client, group: &str) {
    let _ = Api::<CustomResourceDefinition>::all(client.clone())
        .delete(&format!("gadgets.{group}"), &Default::default())
        .await;
}

/// Finding 4: a new CRD and a custom resource in a namespace nothing else uses, in a sync that
/// fails on another object: the parent already lists that namespace, so removing the custom
/// resource from Git later prunes it.
#[tokio::test]
async fn a_failed_sync_leaves_no_orphan_behind() {
    let ns = TestNamespace::new("orphan").await;
    let lonely = TestNamespace::new("lonely").await;
    let group = format!("{}.example.io", unique_name("g"));
    let repo = ManifestDir::new();
    repo.write("crd.yaml", &gadget_crd(&group))
        .write("gadget.yaml", &gadget(&group, &lonely.name, "g1"))
        .write("keep.yaml", &configmap("keep", "x"))
        .write(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports: [{port: 99999}]\n",
        );
    let failed = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(!failed.succeeded(), "the invalid Service fails the sync");
    let gadgets = gadget_api(&ns.client, &group, &lonely.name);
    assert!(
        gadgets.get_opt("g1").await.expect("get").is_some(),
        "the custom resource was created"
    );
    let parent = Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .get(&ns.name)
        .await
        .expect("parent");
    let annotations = parent.annotations();
    assert!(
        annotations["applyset.kubernetes.io/additional-namespaces"].contains(&lonely.name),
        "{annotations:?}"
    );
    assert!(
        annotations["applyset.kubernetes.io/contains-group-kinds"]
            .contains(&format!("Gadget.{group}")),
        "{annotations:?}"
    );

    repo.remove("gadget.yaml");
    repo.remove("bad.yaml");
    let fixed = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(fixed.succeeded(), "{:?}", fixed.errors);
    assert_eq!(fixed.summary.pruned, 1, "{:#?}", fixed.objects);
    eventually(
        Duration::from_secs(30),
        "the orphan to be pruned",
        || async { gadgets.get_opt("g1").await.ok()?.is_none().then_some(()) },
    )
    .await;
    delete_crd(&ns.client, &group).await;
}

/// Finding 5: a user's Secret named like the sync is not stamped into a parent, and a Secret in
/// Git that is the parent itself is refused.
#[tokio::test]
async fn only_kubesync_parents_are_used_and_git_cannot_hold_the_parent() {
    let ns = TestNamespace::new("parent").await;
    sh(&format!(
        "kubectl -n {} create secret generic userdata --from-literal=password=hunter2 >/dev/null",
        ns.name
    ));
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "x"));
    let out = kubesync(
        &["sync", "--name", "userdata", "--namespace", &ns.name],
        repo.path(),
    );
    assert!(!out.status.success());
    let message = output_text(&out);
    assert!(
        message.contains(&format!("Secret {}/userdata", ns.name))
            && message.contains("choose another --name"),
        "{message}"
    );
    assert!(!message.contains("hunter2"));
    let secret = Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .get("userdata")
        .await
        .expect("userdata");
    assert!(
        secret
            .labels()
            .keys()
            .all(|k| !k.starts_with("applyset.kubernetes.io/")),
        "the user's Secret is untouched: {:?}",
        secret.labels()
    );
    assert!(
        Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
            .get_opt("a")
            .await
            .expect("get")
            .is_none()
    );

    repo.write(
        "parent.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: app}\nstringData: {k: v}\n",
    );
    let out = kubesync(
        &["sync", "--name", "app", "--namespace", &ns.name],
        repo.path(),
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("own ApplySet parent"),
        "{}",
        output_text(&out)
    );
}

/// Finding 6: a StatefulSet whose partition holds back the old revision on purpose and a paused
/// Deployment settle; a custom resource is judged by its conditions.
#[tokio::test]
async fn health_settles_for_partitions_and_pauses_and_reads_custom_conditions() {
    let ns = TestNamespace::new("health").await;
    let sts = |image: &str| {
        format!(
            "apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: cache}}
spec:
  serviceName: cache
  replicas: 3
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{partition: 1}}}}
  selector: {{matchLabels: {{app: cache}}}}
  template:
    metadata: {{labels: {{app: cache}}}}
    spec:
      containers: [{{name: c, image: \"{image}\"}}]
"
        )
    };
    let paused = |image: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: held}}
spec:
  paused: true
  replicas: 1
  selector: {{matchLabels: {{app: held}}}}
  template:
    metadata: {{labels: {{app: held}}}}
    spec:
      containers: [{{name: c, image: \"{image}\"}}]
"
        )
    };
    let repo = ManifestDir::new();
    repo.write("sts.yaml", &sts("redis:7.2"))
        .write("held.yaml", &paused("nginx:1.27"));
    let args = [
        "sync",
        "--name",
        "h",
        "--namespace",
        &ns.name,
        "--wait",
        "--timeout",
        "60s",
    ];
    let first = kubesync(&args, repo.path());
    assert!(first.status.success(), "{}", output_text(&first));
    // The new image reaches ordinals 1 and 2 only; the paused Deployment does not roll.
    repo.write("sts.yaml", &sts("redis:7.4"))
        .write("held.yaml", &paused("nginx:1.28"));
    let second = kubesync(&args, repo.path());
    assert!(
        second.status.success(),
        "a finished partitioned rollout and a paused Deployment pass --wait: {}",
        output_text(&second)
    );

    // A custom resource reports Ready=False, then Stalled: --wait says so and names it.
    let group = format!("{}.example.io", unique_name("h"));
    let crd_repo = ManifestDir::new();
    crd_repo
        .write("crd.yaml", &gadget_crd(&group))
        .write("g.yaml", &gadget(&group, &ns.name, "g1"));
    let cr_args = [
        "sync",
        "--name",
        "cr",
        "--namespace",
        &ns.name,
        "--wait",
        "--timeout",
        "5s",
    ];
    let healthy = kubesync(&cr_args, crd_repo.path());
    assert!(
        healthy.status.success(),
        "no conditions: healthy: {}",
        output_text(&healthy)
    );
    let gadgets = gadget_api(&ns.client, &group, &ns.name);
    let set_conditions = |conditions: serde_json::Value| {
        let gadgets = gadgets.clone();
        async move {
            gadgets
                .patch(
                    "g1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conditions}})),
                )
                .await
                .expect("set status")
        }
    };
    set_conditions(json!([{"type": "Ready", "status": "False", "reason": "Warming"}])).await;
    let waiting = kubesync(&cr_args, crd_repo.path());
    assert!(!waiting.status.success(), "{}", output_text(&waiting));
    assert!(
        output_text(&waiting).contains("gadget") && output_text(&waiting).contains("Warming"),
        "{}",
        output_text(&waiting)
    );
    set_conditions(json!([{"type": "Stalled", "status": "True", "message": "size too big"}])).await;
    let started = std::time::Instant::now();
    let stalled = kubesync(
        &[
            "sync",
            "--name",
            "cr",
            "--namespace",
            &ns.name,
            "--wait",
            "--timeout",
            "60s",
        ],
        crd_repo.path(),
    );
    assert!(!stalled.status.success());
    assert!(
        output_text(&stalled).contains("size too big"),
        "{}",
        output_text(&stalled)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a stalled object ends the wait at once"
    );
    delete_crd(&ns.client, &group).await;
}

/// A new Namespace with a ConfigMap in it, a new CRD and one of its custom resources in `ns`.
fn namespace_and_crd_repo(ns: &TestNamespace, namespace: &str, group: &str) -> ManifestDir {
    let repo = ManifestDir::new();
    repo.write(
        "ns.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"),
    )
    .write(
        "cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: inside, namespace: {namespace}}}\ndata: {{k: v}}\n"
        ),
    )
    .write("crd.yaml", &gadget_crd(group))
    .write("g.yaml", &gadget(group, &ns.name, "g1"));
    repo
}

/// Finding 7: `diff` previews a new Namespace with objects in it, and a new CRD with its custom
/// resources, as objects to be created.
#[tokio::test]
async fn diff_previews_objects_in_new_namespaces_and_of_new_crds() {
    let ns = TestNamespace::new("preview").await;
    let fresh = unique_name("fresh");
    let group = format!("{}.example.io", unique_name("p"));
    let repo = namespace_and_crd_repo(&ns, &fresh, &group);
    let out = kubesync(
        &["diff", "--name", "p", "--namespace", &ns.name],
        repo.path(),
    );
    let shown = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "differences, no error: {shown}");
    for expected in [
        format!("namespace/{fresh}"),
        format!("configmap/inside -n {fresh}"),
        format!("customresourcedefinition.apiextensions.k8s.io/gadgets.{group}"),
        format!("gadget.{group}/g1 -n {}", ns.name),
    ] {
        assert!(shown.contains(&expected), "{expected} in: {shown}");
    }
    assert!(
        Api::<Namespace>::all(ns.client.clone())
            .get_opt(&fresh)
            .await
            .expect("get")
            .is_none(),
        "diff creates nothing"
    );
}

/// Finding 9: with --prune-data, contents go before their Namespace and custom resources before
/// their CRD; the report lists the deletes in that order.
#[tokio::test]
async fn prune_deletes_in_reverse_apply_order() {
    let ns = TestNamespace::new("order").await;
    let inner = unique_name("inner");
    let group = format!("{}.example.io", unique_name("o"));
    let repo = namespace_and_crd_repo(&ns, &inner, &group);
    repo.write("keep.yaml", &configmap("keep", "x"));
    let first = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(first.succeeded(), "{:?}", first.errors);
    for f in ["ns.yaml", "cm.yaml", "crd.yaml", "g.yaml"] {
        repo.remove(f);
    }
    let pruned = sync_dir(&ns, repo.path(), |o| {
        o.prune.prune_data = true;
        o.prune.max = Some(10);
    })
    .await;
    assert!(pruned.succeeded(), "{:?}", pruned.errors);
    let order: Vec<&str> = pruned
        .objects
        .iter()
        .filter(|o| o.result == Action::Pruned)
        .map(|o| o.object.split('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        [
            format!("gadget.{group}").as_str(),
            "configmap",
            "namespace",
            "customresourcedefinition.apiextensions.k8s.io"
        ],
        "{:#?}",
        pruned.objects
    );
}
