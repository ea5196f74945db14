//! Remote clusters: a GitSync on the shared control plane applies, through the kubeconfig in a
//! Secret, to a second private control plane (its own etcd and API server on loopback), keeps
//! its ApplySet parent there and prunes there; impersonation happens in the remote cluster; a
//! kubeconfig that would run a command in the controller is refused.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubesync::crd::GitSync;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::faults::request_sync;
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::private::{PrivateTestbed, create_namespace};
use crate::support::{TestNamespace, eventually, run};

async fn kubeconfig_secret(ns: &TestNamespace, name: &str, kubeconfig: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"value": kubeconfig},
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the kubeconfig Secret");
}

/// The last error once Ready is False.
async fn failure(api: &Api<GitSync>, name: &str) -> String {
    eventually(
        Duration::from_secs(40),
        &format!("{name} fails"),
        || async {
            let status = api.get(name).await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then(|| status.last_error.unwrap_or_default())
        },
    )
    .await
}

#[tokio::test]
async fn a_gitsync_converges_and_prunes_in_a_remote_cluster_through_a_kubeconfig_secret() {
    let ns = TestNamespace::new("remote").await;
    install_crd(&ns.client).await;
    let remote = PrivateTestbed::up(2);
    let remote_client = remote.client().await;
    create_namespace(&remote_client, &ns.name).await;
    // Self-contained, as the Secret must be: certificates and key embedded.
    let flat = run(Command::new("kubectl").args([
        "config",
        "view",
        "--flatten",
        "--minify",
        "--kubeconfig",
        &remote.kubeconfig.display().to_string(),
    ]));
    let client_key = flat
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data: "))
        .expect("client-key-data")
        .to_string();
    kubeconfig_secret(&ns, "remote-cluster", &flat).await;
    let exec = flat.replace(
        &format!("client-key-data: {client_key}"),
        "exec: {command: /bin/true, apiVersion: client.authentication.k8s.io/v1}",
    );
    kubeconfig_secret(&ns, "exec-cluster", &exec).await;

    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "one"));
    repo.write("b.yaml", &configmap("b", "one"));
    let first = repo.commit_and_push("two ConfigMaps");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let remote_spec = |secret: &str| {
        json!({"url": daemon.url(), "interval": "1h",
               "kubeConfig": {"secretRef": {"name": secret}}})
    };
    let api = create_gitsync(&ns, "app", remote_spec("remote-cluster")).await;
    let took = wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    println!(
        "first sync to the remote cluster: {:.2} s",
        took.as_secs_f64()
    );

    let remote_configmaps: Api<ConfigMap> = Api::namespaced(remote_client.clone(), &ns.name);
    let local_configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in ["a", "b"] {
        let there = remote_configmaps
            .get(name)
            .await
            .expect("in the remote cluster");
        assert!(
            there
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key("applyset.kubernetes.io/part-of"),
            "{name} carries the set's label"
        );
        assert!(
            local_configmaps.get_opt(name).await.expect("get").is_none(),
            "{name} not here"
        );
    }
    let parent_name = format!("kubesync.{}.app", ns.name);
    let remote_secrets: Api<Secret> = Api::namespaced(remote_client.clone(), &ns.name);
    let parent = remote_secrets
        .get(&parent_name)
        .await
        .expect("the parent, in the remote cluster");
    let annotations = parent.metadata.annotations.unwrap_or_default();
    assert!(
        annotations
            .get("applyset.kubernetes.io/contains-group-kinds")
            .is_some_and(|g| g.contains("ConfigMap")),
        "the parent records the set: {annotations:?}"
    );

    // Removed from Git: pruned in the remote cluster.
    repo.remove("b.yaml");
    let second = repo.commit_and_push("b leaves");
    request_sync(&api, "app", "second").await;
    wait_for_revision(&api, "app", &second, Duration::from_secs(30)).await;
    assert!(
        remote_configmaps.get_opt("b").await.expect("get").is_none(),
        "b pruned there"
    );
    assert!(remote_configmaps.get_opt("a").await.expect("get").is_some());

    // Impersonation happens in the remote cluster, where this ServiceAccount has no rights.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"serviceAccountName": "nobody"}})),
    )
    .await
    .expect("patch");
    let error = failure(&api, "app").await;
    assert!(
        error.contains(&format!("system:serviceaccount:{}:nobody", ns.name))
            && error.to_lowercase().contains("forbidden"),
        "{error}"
    );
    assert!(
        remote_configmaps.get_opt("a").await.expect("get").is_some(),
        "nothing pruned"
    );

    // A kubeconfig that would run a command in the controller: refused, naming the field.
    let refused = create_gitsync(&ns, "exec", remote_spec("exec-cluster")).await;
    let error = failure(&refused, "exec").await;
    assert!(
        error.contains("exec-cluster") && error.contains("exec is refused"),
        "{error}"
    );

    let log = controller.log_text();
    assert!(!log.contains(&client_key), "the client key is never logged");
    let status = serde_json::to_string(&api.get("app").await.expect("get").status).expect("json");
    assert!(!status.contains(&client_key));
}
