//! Flux's server-side-apply test data (../shared/fixtures/flux-ssa-testdata), used as it is: each
//! template's `%[1]s` / `%s` is replaced by the test's namespace.
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use kubesync::sync::Action;

use crate::support::manifests::{ManifestDir, result_of, sync_dir};
use crate::support::{TestNamespace, repo_root, run_with_input};

fn fixture(name: &str, namespace: &str) -> String {
    let path = repo_root()
        .join("../shared/fixtures/flux-ssa-testdata/ssa/testdata")
        .join(name);
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    template
        .replace("%[1]s", namespace)
        .replace("%s", namespace)
}

/// The fixture's Secret is named like the namespace, which is also the default name of the sync's
/// own ApplySet parent Secret: the set gets another name, as Git may not hold the parent.
fn own_set(options: &mut kubesync::sync::SyncOptions) {
    options.target.name = "flux-set".into();
}

#[tokio::test]
async fn immutable_secret_change_is_refused_then_recreated_on_request() {
    let ns = TestNamespace::new("flux-immutable").await;
    let repo = ManifestDir::new();
    let original = fixture("test1.yaml", &ns.name);
    repo.write("test1.yaml", &original);
    let first = sync_dir(&ns, repo.path(), own_set).await;
    assert!(first.succeeded(), "{:?}", first.errors);
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let uid = secrets.get(&ns.name).await.expect("secret").uid();

    // Change the immutable Secret's data.
    repo.write(
        "test1.yaml",
        &original.replace("key: \"private-key\"", "key: \"rotated-key\""),
    );
    let refused = sync_dir(&ns, repo.path(), own_set).await;
    assert!(!refused.succeeded());
    let secret_line = format!("secret/{0} -n {0}", ns.name);
    match result_of(&refused, &secret_line) {
        Action::Failed(reason) => {
            assert!(
                reason.contains("test1.yaml (document 1)"),
                "names the file: {reason}"
            );
            assert!(reason.contains("immutable"), "names the problem: {reason}");
            assert!(
                reason.contains("kubesync.dev/recreate"),
                "says how to proceed: {reason}"
            );
            assert!(
                !reason.contains("rotated-key") && !reason.contains("private-key"),
                "no secret value: {reason}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // Ask for re-creation in Git.
    let annotated = original
        .replace("key: \"private-key\"", "key: \"rotated-key\"")
        .replacen(
            "kind: Secret\nmetadata:\n",
            "kind: Secret\nmetadata:\n  annotations:\n    kubesync.dev/recreate: \"true\"\n",
            1,
        );
    assert_ne!(annotated, original);
    repo.write("test1.yaml", &annotated);
    let recreated = sync_dir(&ns, repo.path(), own_set).await;
    assert!(recreated.succeeded(), "{:?}", recreated.errors);
    let secret = secrets.get(&ns.name).await.expect("secret");
    assert_ne!(secret.uid(), uid, "the Secret was re-created");
    let data = secret.data.expect("data");
    assert_eq!(data["key"].0, b"rotated-key");

    // Clean up the cluster-scoped objects of test1 (ClusterRole, binding, StorageClass).
    let empty = ManifestDir::new();
    let cleanup = sync_dir(&ns, empty.path(), |o| {
        own_set(o);
        o.prune.allow_empty = true;
    })
    .await;
    assert!(cleanup.succeeded(), "{:?}", cleanup.errors);
    assert!(
        result_of(
            &cleanup,
            &format!("clusterrole.rbac.authorization.k8s.io/{}", ns.name)
        ) == &Action::Pruned
    );
}

#[tokio::test]
async fn crd_and_its_custom_resource_sync_together() {
    let ns = TestNamespace::new("flux-crd").await;
    let repo = ManifestDir::new();
    repo.write("test5.yaml", &fixture("test5.yaml", &ns.name));
    let report = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    assert!(
        report.warnings.iter().any(|w| w.contains("cluster-scoped")),
        "the CR's stray namespace is reported: {:?}",
        report.warnings
    );
    let cr = format!("clustertest.testing.fluxcd.io/{}", ns.name);
    assert!(
        matches!(
            result_of(&report, &cr),
            Action::Created | Action::Configured
        ),
        "{:?}",
        report.objects
    );
    // Remove the custom resource and the CRD (CRDs are protected from prune by default).
    let empty = ManifestDir::new();
    let cleanup = sync_dir(&ns, empty.path(), |o| {
        o.prune.allow_empty = true;
        o.prune.prune_data = true;
    })
    .await;
    assert!(cleanup.succeeded(), "{:?}", cleanup.errors);
    assert_eq!(result_of(&cleanup, &cr), &Action::Pruned);
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let _ = crds
        .delete("clustertests.testing.fluxcd.io", &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn objects_made_with_kubectl_are_adopted_and_fields_removed_from_git_go() {
    let ns = TestNamespace::new("flux-adopt").await;
    // kubectl creates the Ingress with two rules (client-side apply, as the seed's script did).
    let with_two_rules = fixture("test9.yaml", &ns.name);
    run_with_input(
        std::process::Command::new("kubectl").args(["apply", "-f", "-"]),
        &with_two_rules,
    );
    let ingresses: Api<Ingress> = Api::namespaced(ns.client.clone(), &ns.name);
    let before = ingresses.get(&ns.name).await.expect("ingress");
    assert!(
        before
            .annotations()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );

    // Git holds the one-rule version: kubesync takes over and the second rule goes.
    let repo = ManifestDir::new();
    repo.write("test8.yaml", &fixture("test8.yaml", &ns.name));
    let report = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(report.succeeded(), "{:?}", report.errors);
    let after = ingresses.get(&ns.name).await.expect("ingress");
    let rules = after
        .spec
        .as_ref()
        .and_then(|s| s.rules.as_ref())
        .expect("rules");
    assert_eq!(rules.len(), 1, "the rule removed from Git is removed");
    let managers: Vec<String> = after
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "kubectl-client-side-apply"),
        "kubectl's manager was adopted: {managers:?}"
    );
    assert!(
        !after
            .annotations()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "the last-applied annotation is dropped"
    );
    // And a label that only kubectl had set disappears too, now that kubesync owns it.
    let again = sync_dir(&ns, repo.path(), |_| {}).await;
    assert!(again.succeeded());
    assert_eq!(
        again.summary.unchanged, again.summary.managed,
        "stable after adoption: {:?}",
        again.objects
    );
}
