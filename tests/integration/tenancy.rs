//! Tenancy lockdown (`--default-service-account`, `--no-cross-namespace-refs`,
//! `--trusted-namespace`): a tenant's GitSync cannot create a ClusterRoleBinding, an object in
//! another namespace, or anything its namespace's ServiceAccount may not; the same GitSyncs in a
//! trusted namespace work. Two controllers with the same flags, each watching one namespace.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::DeleteParams;
use kubesync::crd::GitSync;
use serde_json::json;

use crate::support::controller::{ControllerProcess, create_gitsync, install_crd};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::{TestNamespace, eventually, run_with_input};

/// The Ready condition's (status, reason) and the last error, once Ready is set.
async fn outcome(api: &Api<GitSync>, name: &str) -> (String, String, String) {
    eventually(
        Duration::from_secs(40),
        &format!("GitSync {name} is Ready or failed"),
        || async {
            let status = api.get(name).await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status != "Unknown").then(|| {
                let error = status.last_error.clone().unwrap_or_default();
                (ready.status.clone(), ready.reason.clone(), error)
            })
        },
    )
    .await
}

async fn configmap_exists(ns: &TestNamespace, namespace: &str, name: &str) -> bool {
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), namespace);
    api.get_opt(name).await.expect("get").is_some()
}

/// A repository: `crb/` holds a ConfigMap and a ClusterRoleBinding that would make the tenant's
/// ServiceAccount cluster-admin; `elsewhere/` a ConfigMap in namespace `other`; `own/` a
/// ConfigMap and a Secret of the GitSync's own namespace.
fn tenant_repo(crb: &str, tenant: &str, other: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.write("crb/cm.yaml", &configmap("crb-cm", "one"));
    repo.write(
        "crb/crb.yaml",
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {crb}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\n\
             subjects:\n- {{kind: ServiceAccount, name: tenant, namespace: {tenant}}}\n"
        ),
    );
    repo.write(
        "elsewhere/cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: planted, namespace: {other}}}\ndata: {{key: x}}\n"
        ),
    );
    repo.write("own/cm.yaml", &configmap("own-cm", "one"));
    repo.write(
        "own/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: tenancy-Pw4-never-shown}\n",
    );
    repo.commit_and_push("tenant manifests");
    repo
}

/// The tenant's ServiceAccount may manage ConfigMaps of its namespace, nothing else.
fn tenant_account(namespace: &str) {
    run_with_input(
        Command::new("kubectl").args(["apply", "-n", namespace, "-f", "-"]),
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: tenant}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: configmaps}}\n\
             rules:\n- {{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list, watch, create, update, patch, delete]}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenant}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmaps}}\n\
             subjects:\n- {{kind: ServiceAccount, name: tenant, namespace: {namespace}}}\n"
        ),
    );
}

#[tokio::test]
async fn a_locked_down_tenant_creates_nothing_its_rbac_forbids_and_a_trusted_namespace_works() {
    let tenant = TestNamespace::new("tenant").await;
    let trusted = TestNamespace::new("trusted").await;
    let other = TestNamespace::new("other").await;
    install_crd(&tenant.client).await;
    tenant_account(&tenant.name);
    let crb_name = format!("{}-admin", tenant.name);
    let repo = tenant_repo(&crb_name, &tenant.name, &other.name);
    let daemon = GitDaemon::start(repo.root.path());
    let lockdown = [
        "--default-service-account",
        "tenant",
        "--no-cross-namespace-refs",
        "--trusted-namespace",
        &format!("kube-system,{}", trusted.name),
    ];
    let _tenant_controller = ControllerProcess::start(&tenant.name, &lockdown);
    let _trusted_controller = ControllerProcess::start(&trusted.name, &lockdown);
    let spec = |path: &str| json!({"url": daemon.url(), "path": path, "interval": "1h"});
    let tenants = create_gitsync(&tenant, "crb", spec("crb")).await;
    create_gitsync(&tenant, "elsewhere", spec("elsewhere")).await;
    create_gitsync(&tenant, "own", spec("own")).await;
    let mut reach = spec("own");
    reach["dependsOn"] = json!([{"name": "infra", "namespace": trusted.name}]);
    create_gitsync(&tenant, "reach", reach).await;

    // A ClusterRoleBinding: refused before anything is applied.
    let (ready, _, error) = outcome(&tenants, "crb").await;
    println!("a tenant's ClusterRoleBinding: {error}");
    assert_eq!(ready, "False", "{error}");
    assert!(
        error.contains("crb/crb.yaml")
            && error.contains(&format!("ClusterRoleBinding/{crb_name}"))
            && error.contains("forbidden: ClusterRoleBinding is cluster-scoped"),
        "names the file, the object and why: {error}"
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(tenant.client.clone());
    assert!(bindings.get_opt(&crb_name).await.expect("get").is_none());
    assert!(
        !configmap_exists(&tenant, &tenant.name, "crb-cm").await,
        "nothing of that sync is applied"
    );

    // An object in another namespace: refused, nothing created there or here.
    let (ready, _, error) = outcome(&tenants, "elsewhere").await;
    assert_eq!(ready, "False", "{error}");
    assert!(
        error.contains(&format!("forbidden: it is in namespace {}", other.name)),
        "{error}"
    );
    assert!(!configmap_exists(&tenant, &other.name, "planted").await);

    // Its own namespace: applied as the default ServiceAccount, whose RBAC forbids the Secret.
    let (ready, _, error) = outcome(&tenants, "own").await;
    assert_eq!(ready, "False", "{error}");
    assert!(
        error.contains(&format!("system:serviceaccount:{}:tenant", tenant.name))
            && error.to_lowercase().contains("forbidden"),
        "applied as the default ServiceAccount: {error}"
    );
    assert!(configmap_exists(&tenant, &tenant.name, "own-cm").await);
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), &tenant.name);
    assert!(secrets.get_opt("db").await.expect("get").is_none());
    assert!(!error.contains("tenancy-Pw4-never-shown"));

    // A reference to another namespace: an invalid spec, stalled.
    let (ready, reason, error) = outcome(&tenants, "reach").await;
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        error.contains(&format!("spec.dependsOn[0] {}/infra", trusted.name)),
        "{error}"
    );

    // The same GitSyncs in a trusted namespace work, with the controller's own rights.
    let admins = create_gitsync(&trusted, "crb", spec("crb")).await;
    create_gitsync(&trusted, "elsewhere", spec("elsewhere")).await;
    for name in ["crb", "elsewhere"] {
        let (ready, _, error) = outcome(&admins, name).await;
        assert_eq!(ready, "True", "{name}: {error}");
    }
    assert!(bindings.get_opt(&crb_name).await.expect("get").is_some());
    assert!(configmap_exists(&tenant, &other.name, "planted").await);
    assert!(configmap_exists(&tenant, &trusted.name, "crb-cm").await);
    bindings
        .delete(&crb_name, &DeleteParams::default())
        .await
        .expect("delete the ClusterRoleBinding");
}
