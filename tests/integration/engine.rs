//! The sync engine against the local control plane: apply, prune and its guards, drift, diff.

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubesync::sync::{Action, PruneBlocked};
use serde_json::json;

use crate::support::manifests::{ManifestDir, configmap, result_of, sync_dir};
use crate::support::{TestNamespace, repo_root};

fn cm(ns: &TestNamespace, name: &str) -> String {
    format!("configmap/{name} -n {}", ns.name)
}

#[tokio::test]
async fn removed_file_is_pruned_and_nothing_else() {
    let ns = TestNamespace::new("eng-prune").await;
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "1"))
        .write("b.yaml", &configmap("b", "2"))
        .write("c.yaml", &configmap("c", "3"));
    let first = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(first.succeeded(), "{:#?}", first.errors);
    assert_eq!(first.summary.created, 3);
    // An object not from Git, in the same namespace, must survive.
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bystander"}})).expect("cm"),
    )
    .await
    .expect("create bystander");
    repo.remove("b.yaml");
    let second = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(second.succeeded(), "{:#?}", second.errors);
    assert_eq!(result_of(&second, &cm(&ns, "b")), &Action::Pruned);
    assert_eq!(second.summary.pruned, 1);
    assert!(api.get_opt("b").await.expect("get").is_none(), "b is gone");
    for name in ["a", "c", "bystander"] {
        assert!(
            api.get_opt(name).await.expect("get").is_some(),
            "{name} stays"
        );
    }
    let entry = api
        .get("a")
        .await
        .expect("a")
        .managed_fields()
        .iter()
        .any(|m| {
            m.manager.as_deref() == Some("kubesync") && m.operation.as_deref() == Some("Apply")
        });
    assert!(entry, "a has an Apply entry of kubesync");
}

#[tokio::test]
async fn nothing_is_applied_or_pruned_when_a_file_is_invalid() {
    let ns = TestNamespace::new("eng-fail").await;
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "1"))
        .write("b.yaml", &configmap("b", "2"));
    assert!(sync_dir(&ns, repo.path(), |_| {}).await.succeeded());
    repo.remove("b.yaml");
    repo.write("a.yaml", &configmap("a", "changed"));
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
    );
    let report = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(!report.succeeded());
    assert_eq!(report.prune_blocked, Some(PruneBlocked::Failure));
    assert!(
        report
            .error_messages()
            .iter()
            .any(|e| e.starts_with("broken.yaml (document 0)")),
        "{:?}",
        report.errors
    );
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        api.get_opt("b").await.expect("get").is_some(),
        "b not pruned after a failure"
    );
    let a = api.get("a").await.expect("a");
    assert_eq!(
        a.data.expect("data")["key"],
        "1",
        "nothing applied when the input is invalid"
    );
}

#[tokio::test]
async fn apply_error_on_one_object_blocks_prune_but_not_the_others() {
    let ns = TestNamespace::new("eng-applyfail").await;
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "1"))
        .write("b.yaml", &configmap("b", "2"));
    assert!(sync_dir(&ns, repo.path(), |_| {}).await.succeeded());
    repo.remove("b.yaml");
    repo.write("a.yaml", &configmap("a", "new"));
    // The server rejects this Service (nodePort out of range).
    repo.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 80}]\n");
    let report = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(!report.succeeded());
    assert!(
        matches!(result_of(&report, &format!("service/bad -n {}", ns.name)), Action::Failed(r) if r.contains("svc.yaml"))
    );
    assert_eq!(report.prune_blocked, Some(PruneBlocked::Failure));
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert_eq!(
        api.get("a").await.expect("a").data.expect("data")["key"],
        "new",
        "other objects are applied"
    );
    assert!(
        api.get_opt("b").await.expect("get").is_some(),
        "no prune after an apply failure"
    );
}

#[tokio::test]
async fn empty_source_and_too_many_deletions_block_prune() {
    let ns = TestNamespace::new("eng-guards").await;
    let repo = ManifestDir::new();
    for i in 0..12 {
        repo.write(&format!("cm{i}.yaml"), &configmap(&format!("cm{i}"), "x"));
    }
    assert!(sync_dir(&ns, repo.path(), |_| {}).await.succeeded());
    for i in 0..12 {
        repo.remove(&format!("cm{i}.yaml"));
    }
    let empty = sync_dir(&ns, repo.path(), |_| {}).await;
    assert_eq!(empty.prune_blocked, Some(PruneBlocked::EmptySource));
    repo.write("keep.yaml", &configmap("keep", "x"));
    let too_many = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(
        matches!(too_many.prune_blocked, Some(PruneBlocked::TooMany(_))),
        "{:?}",
        too_many.prune_blocked
    );
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(api.get_opt("cm0").await.expect("get").is_some());
    let allowed = sync_dir(&ns, repo.path(), |o| o.prune.max = Some(12)).await;
    assert!(allowed.succeeded(), "{:?}", allowed.errors);
    assert_eq!(allowed.summary.pruned, 12);
    assert!(api.get_opt("cm0").await.expect("get").is_none());
}

#[tokio::test]
async fn foreign_owned_protected_and_disabled_objects_are_not_pruned() {
    let ns = TestNamespace::new("eng-keep").await;
    let repo = ManifestDir::new();
    repo.write("owner.yaml", &configmap("owner", "x"))
        .write("child.yaml", &configmap("child", "x"))
        .write("keepme.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keepme\n  annotations: {kubesync.dev/prune: disabled}\n")
        .write("pvc.yaml", "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n")
        .write("filler.yaml", &(0..10).map(|i| configmap(&format!("f{i}"), "x")).collect::<Vec<_>>().join("---\n"));
    let first = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(first.succeeded(), "{:?}", first.errors);
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let owner = api.get("owner").await.expect("owner");
    // child becomes controlled by owner (as a ReplicaSet's Pod would be).
    let patch = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid(), "controller": true}]}});
    api.patch("child", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("set owner");
    // A foreign object carrying our label but never applied by kubesync.
    let id = kubesync::applyset::Parent::secret(&ns.name, &ns.name).id();
    let foreign: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "foreign", "labels": {"applyset.kubernetes.io/part-of": id}}}),
    )
    .expect("cm");
    api.create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign");
    for f in ["child.yaml", "keepme.yaml", "pvc.yaml"] {
        repo.remove(f);
    }
    let report = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert!(
        matches!(result_of(&report, &cm(&ns, "child")), Action::Skipped(r) if r.contains("controlled by ConfigMap/owner"))
    );
    assert!(
        matches!(result_of(&report, &cm(&ns, "foreign")), Action::Skipped(r) if r.contains("field manager"))
    );
    assert!(matches!(
        result_of(&report, &cm(&ns, "keepme")),
        Action::Kept(_)
    ));
    assert!(matches!(
        result_of(
            &report,
            &format!("persistentvolumeclaim/data -n {}", ns.name)
        ),
        Action::Kept(_)
    ));
    for name in ["child", "foreign", "keepme"] {
        assert!(
            api.get_opt(name).await.expect("get").is_some(),
            "{name} stays"
        );
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ns.client.clone(), &ns.name);
    let pvc = pvcs.get("data").await.expect("pvc stays");
    assert!(
        !pvc.labels().contains_key("applyset.kubernetes.io/part-of"),
        "a kept object is released from the set"
    );
    let again = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(
        again
            .objects
            .iter()
            .all(|o| !o.object.contains("persistentvolumeclaim")),
        "released objects are not reported again"
    );
}

#[tokio::test]
async fn no_op_sync_writes_nothing_and_drift_is_corrected() {
    let ns = TestNamespace::new("eng-drift").await;
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "from-git"));
    assert!(sync_dir(&ns, repo.path(), |_| {}).await.succeeded());
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let rv = api.get("a").await.expect("a").resource_version();
    let again = sync_dir(&ns, repo.path(), |_| {}).await;
    assert_eq!(result_of(&again, &cm(&ns, "a")), &Action::Unchanged);
    assert_eq!(
        api.get("a").await.expect("a").resource_version(),
        rv,
        "a no-op sync does not write"
    );
    // Someone edits a field Git owns.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"key": "by-hand"}})),
    )
    .await
    .expect("edit");
    let corrected = sync_dir(&ns, repo.path(), |_| {}).await;
    assert_eq!(result_of(&corrected, &cm(&ns, "a")), &Action::Configured);
    assert_eq!(corrected.summary.drift_corrected, 1);
    assert_eq!(
        api.get("a").await.expect("a").data.expect("data")["key"],
        "from-git"
    );
}

#[tokio::test]
async fn diff_exits_0_in_sync_and_1_with_differences() {
    let ns = TestNamespace::new("eng-diff").await;
    let repo = ManifestDir::new();
    repo.write("a.yaml", &configmap("a", "one"));
    assert!(sync_dir(&ns, repo.path(), |_| {}).await.succeeded());
    let diff = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubesync"))
            .args(["diff", "--repo"])
            .arg(repo.path())
            .args(["--name", &ns.name, "--namespace", &ns.name])
            .output()
            .expect("run kubesync diff")
    };
    let clean = diff();
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(clean.stdout.is_empty());
    repo.write("a.yaml", &configmap("a", "two"));
    repo.write("b.yaml", &configmap("b", "new"));
    let changed = diff();
    assert_eq!(
        changed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let out = String::from_utf8_lossy(&changed.stdout);
    assert!(
        out.contains("-  key: one") && out.contains("+  key: two"),
        "{out}"
    );
    assert!(
        out.contains("--- /dev/null"),
        "a new object diffs against nothing: {out}"
    );
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert_eq!(
        api.get("a").await.expect("a").data.expect("data")["key"],
        "one",
        "diff changes nothing"
    );
    assert!(api.get_opt("b").await.expect("get").is_none());
    repo.write("broken.yaml", "kind: [");
    assert_eq!(diff().status.code(), Some(2), "errors exit 2");
}

#[tokio::test]
async fn cli_sync_prints_one_line_per_object() {
    let ns = TestNamespace::new("eng-cli").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(["sync", "--repo"])
        .arg(repo_root().join("examples/hello"))
        .args([
            "--name",
            &ns.name,
            "--namespace",
            &ns.name,
            "--path",
            "app.yaml",
            "--wait",
            "--timeout",
            "90s",
        ])
        .output()
        .expect("run kubesync sync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("deployment.apps/hello -n {} created", ns.name)),
        "{stdout}"
    );
    assert!(
        stdout.contains("sync ") && stdout.contains(" succeeded at revision sha256:"),
        "{stdout}"
    );
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let parent = secrets.get(&ns.name).await.expect("ApplySet parent Secret");
    let annotations = parent.annotations();
    assert_eq!(
        annotations["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Deployment.apps,Service"
    );
    assert!(annotations["applyset.kubernetes.io/tooling"].starts_with("kubesync/v"));
}
