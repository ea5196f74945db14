//! Helm charts, rendered by the real pinned `helm` (the testbed's build, on PATH): a `helm
//! create` scaffold kept in Git syncs, becomes healthy, rolls on a values change in Git and
//! prunes a removed template; the same chart from an HTTPS chart repository on loopback (basic
//! auth, private CA) with a version range resolved into the status; a wrong password, a missing
//! chart, a template error and a broken values file each fail before anything is applied; and
//! `kubesync render` equals `helm template` for every chart and values set used.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubesync::crd::GitSync;
use serde_json::json;

use crate::kustomize::objects;
use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::servers::{PASSWORD, USER, start_chart_repository};
use crate::support::{TestNamespace, eventually, run};

/// `helm create web` under `charts/` of `dir`, at `version`.
fn helm_create(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("charts")).expect("mkdir");
    run(Command::new("helm")
        .args(["create", "web"])
        .current_dir(dir.join("charts")));
    let chart_yaml = dir.join("charts/web/Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
    let text = text.replace("version: 0.1.0", &format!("version: {version}"));
    std::fs::write(&chart_yaml, text).expect("Chart.yaml");
}

/// `kubesync render` of the chart equals `helm template` of it, object for object.
fn assert_render_equals_helm_template(repo: &Path, namespace: &str, values: &[&str]) {
    assert_chart_renders_as_helm(repo, "charts/web", "web", namespace, values);
}

fn assert_chart_renders_as_helm(
    repo: &Path,
    chart: &str,
    release: &str,
    namespace: &str,
    values: &[&str],
) {
    let mut ours = Command::new(env!("CARGO_BIN_EXE_kubesync"));
    ours.args([
        "render",
        "--show-secrets",
        "--name",
        release,
        "-n",
        namespace,
    ])
    .args(["--helm-chart", chart])
    .arg("--repo")
    .arg(repo);
    let mut theirs = Command::new("helm");
    theirs
        .args(["template", release, chart, "--namespace", namespace])
        .args(["--include-crds", "--skip-tests"])
        .current_dir(repo);
    for file in values {
        ours.args(["--helm-values", file]);
        theirs.args(["--values", file]);
    }
    let ours = objects(&run(&mut ours), namespace);
    let theirs = objects(&run(&mut theirs), namespace);
    assert!(theirs.len() >= 2, "helm rendered {chart}: {theirs:?}");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{chart} {values:?}: the same objects"
    );
    for (key, theirs) in &theirs {
        assert_eq!(&ours[key], theirs, "{chart} {values:?}: {key}");
    }
}

async fn replicas(ns: &TestNamespace) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.get_opt("web").await.ok()??.spec?.replicas
}

/// Secrets with `username`, `password` and the server's `ca.crt`, one per (name, password).
async fn repository_secrets<const N: usize>(
    ns: &TestNamespace,
    ca: &Path,
    secrets: [(&str, &str); N],
) {
    let ca = std::fs::read_to_string(ca).expect("ca");
    let api: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, password) in secrets {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"username": USER, "password": password, "ca.crt": ca},
        }))
        .expect("Secret");
        api.create(&PostParams::default(), &secret)
            .await
            .expect("Secret");
    }
}

/// Ready=True, or the last error once Ready is False.
async fn outcome(api: &Api<GitSync>, name: &str) -> Result<GitSync, String> {
    eventually(
        Duration::from_secs(60),
        &format!("{name} settles"),
        || async {
            let sync = api.get(name).await.ok()?;
            let status = sync.status.clone()?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            match ready.status.as_str() {
                "True" => Some(Ok(sync)),
                "False" => Some(Err(status.last_error.unwrap_or_default())),
                _ => None,
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_chart_in_git_syncs_rolls_on_a_values_change_and_prunes_a_removed_template() {
    let ns = TestNamespace::new("helm").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    helm_create(&repo.work(), "0.1.0");
    repo.write(
        "values/home.yaml",
        "replicaCount: 2\nservice:\n  port: 8080\n",
    );
    let first = repo.commit_and_push("the web chart, from helm create");
    assert_render_equals_helm_template(&repo.work(), &ns.name, &[]);
    assert_render_equals_helm_template(&repo.work(), &ns.name, &["values/home.yaml"]);

    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let spec = json!({
        "url": daemon.url(), "interval": "1h", "wait": true, "timeout": "60s",
        "helm": {"chart": "charts/web", "valuesFiles": ["values/home.yaml"],
                 "values": {"podAnnotations": {"from": "inline"}}},
    });
    let api = create_gitsync(&ns, "web", spec).await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(90)).await;
    let synced = outcome(&api, "web").await.expect("Ready, healthy");
    let summary = synced.status.and_then(|s| s.summary).expect("summary");
    assert_eq!(summary.unhealthy, 0, "healthy: {summary:?}");
    assert_eq!(replicas(&ns).await, Some(2), "the values file applies");
    let services: Api<Service> = Api::namespaced(ns.client.clone(), &ns.name);
    let service = services.get("web").await.expect("the chart's Service");
    assert_eq!(
        service.spec.expect("spec").ports.expect("ports")[0].port,
        8080
    );
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod_annotations = (deployments.get("web").await.expect("web").spec)
        .and_then(|s| s.template.metadata?.annotations)
        .unwrap_or_default();
    assert_eq!(
        pod_annotations.get("from").map(String::as_str),
        Some("inline")
    );

    // A values change in Git rolls the Deployment; a removed template's object is pruned.
    repo.write(
        "values/home.yaml",
        "replicaCount: 3\nservice:\n  port: 8080\n",
    );
    repo.remove("charts/web/templates/service.yaml");
    let second = repo.commit_and_push("three replicas, no Service");
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kubesync.dev/requestedAt": "2"}}})),
    )
    .await
    .expect("request");
    wait_for_revision(&api, "web", &second, Duration::from_secs(90)).await;
    assert_eq!(replicas(&ns).await, Some(3));
    assert!(
        services.get_opt("web").await.expect("get").is_none(),
        "Service pruned"
    );
    assert_render_equals_helm_template(&repo.work(), &ns.name, &["values/home.yaml"]);
}

#[tokio::test]
async fn a_chart_from_an_https_repository_resolves_a_range_and_errors_name_their_source() {
    let ns = TestNamespace::new("helm-repo").await;
    install_crd(&ns.client).await;
    // Three versions of the chart, packaged and indexed, behind basic auth and a private CA.
    let server = start_chart_repository();
    let www = server.dir.path().join("www/charts");
    let build = tempfile::tempdir().expect("tempdir");
    for version in ["0.1.0", "0.1.5", "0.2.0"] {
        let dir = build.path().join(version);
        helm_create(&dir, version);
        run(Command::new("helm")
            .args(["package", "charts/web", "--destination"])
            .arg(&www)
            .current_dir(&dir));
    }
    let url = format!("https://127.0.0.1:{}/charts", server.port);
    run(Command::new("helm")
        .args(["repo", "index", "."])
        .arg("--url")
        .arg(&url)
        .current_dir(&www));
    let ca = server.dir.path().join("ca.pem");
    repository_secrets(
        &ns,
        &ca,
        [("charts", PASSWORD), ("wrong", "not-the-Pw7-password")],
    )
    .await;

    let repo = GitRepo::new();
    repo.write("values.yaml", "replicaCount: 1\n");
    repo.write("broken-values.yaml", "replicaCount: [1\n");
    helm_create(&repo.work(), "0.1.0");
    repo.write(
        "charts/web/templates/broken.yaml",
        "{{- if .Values.broken }}\nkind: ConfigMap\nvalue: {{ .Values.missing.deeper.field }}\n{{- end }}\n",
    );
    let first = repo.commit_and_push("values");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let remote = |secret: &str, version: &str| {
        json!({"url": daemon.url(), "interval": "1h",
               "helm": {"repoURL": url, "chart": "web", "version": version,
                        "valuesFiles": ["values.yaml"], "secretRef": {"name": secret}}})
    };
    let api = create_gitsync(&ns, "web", remote("charts", "~0.1.0")).await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(90)).await;
    let chart = (api.get("web").await.expect("get").status)
        .and_then(|s| s.helm_chart)
        .expect("status.helmChart");
    assert_eq!(
        chart.version, "0.1.5",
        "~0.1.0 resolves to the newest 0.1.x"
    );
    assert!(chart.digest.starts_with("sha256:"), "{chart:?}");
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let labels = (deployments.get("web").await.expect("web").metadata.labels).unwrap_or_default();
    assert_eq!(
        labels.get("helm.sh/chart").map(String::as_str),
        Some("web-0.1.5")
    );

    // The CLI renders the same chart as `helm template --repo` does, with the same credentials.
    let password_file = build.path().join("password");
    std::fs::write(&password_file, PASSWORD).expect("password file");
    let ca_file = server.dir.path().join("ca.pem");
    let ours = run(Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "render",
            "--name",
            "web",
            "-n",
            &ns.name,
            "--helm-chart",
            "web",
        ])
        .args([
            "--helm-repo",
            &url,
            "--helm-version",
            "~0.1.0",
            "--helm-values",
            "values.yaml",
        ])
        .args(["--helm-username", USER])
        .arg("--helm-password-file")
        .arg(&password_file)
        .arg("--helm-ca-file")
        .arg(&ca_file)
        .arg("--repo")
        .arg(repo.work()));
    let theirs = run(Command::new("helm")
        .args([
            "template",
            "web",
            "web",
            "--repo",
            &url,
            "--version",
            "~0.1.0",
        ])
        .args([
            "--namespace",
            &ns.name,
            "--include-crds",
            "--skip-tests",
            "--values",
            "values.yaml",
        ])
        .args(["--username", USER, "--password", PASSWORD])
        .arg("--ca-file")
        .arg(&ca_file)
        .env("HELM_CACHE_HOME", build.path().join("helm-cache"))
        .env("HELM_CONFIG_HOME", build.path().join("helm-config"))
        .current_dir(repo.work()));
    assert_eq!(
        objects(&ours, &ns.name),
        objects(&theirs, &ns.name),
        "render equals helm template --repo"
    );

    // Each error names its source and fails before anything is applied.
    let cases = [
        (
            "unreachable",
            json!({"url": daemon.url(), "interval": "1h",
                   "helm": {"repoURL": "https://127.0.0.1:9/charts", "chart": "web"}}),
            vec!["helm pull failed", "web of https://127.0.0.1:9/charts"],
        ),
        (
            "wrong-password",
            remote("wrong", "~0.1.0"),
            vec!["helm pull failed", "web of https://127.0.0.1"],
        ),
        (
            "no-version",
            remote("charts", "9.9.9"),
            vec!["helm pull failed", "9.9.9"],
        ),
        (
            "no-chart",
            json!({"url": daemon.url(), "interval": "1h", "helm": {"chart": "charts/none"}}),
            vec!["helm chart charts/none: no Chart.yaml there"],
        ),
        (
            "template-error",
            json!({"url": daemon.url(), "interval": "1h",
                   "helm": {"chart": "charts/web", "values": {"broken": true}}}),
            vec!["helm chart charts/web: helm template failed", "broken.yaml"],
        ),
        (
            "bad-values",
            json!({"url": daemon.url(), "interval": "1h",
                   "helm": {"chart": "charts/web", "valuesFiles": ["broken-values.yaml"]}}),
            vec!["values file broken-values.yaml is not a YAML mapping"],
        ),
    ];
    for (name, spec, says) in cases {
        let api = create_gitsync(&ns, name, spec).await;
        let error = outcome(&api, name).await.expect_err("fails");
        for phrase in says {
            assert!(error.contains(phrase), "{name}: says {phrase:?}: {error}");
        }
        assert!(
            !error.contains("not-the-Pw7-password") && !error.contains(PASSWORD),
            "{error}"
        );
        let reason = (api.get(name).await.expect("get").status)
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason)
            .unwrap_or_default();
        assert_eq!(reason, "RenderFailed", "{name}: {error}");
    }
    assert_eq!(
        deployments
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        1,
        "only the first GitSync's Deployment exists"
    );
    let log = controller.log_text();
    assert!(!log.contains(PASSWORD) && !log.contains("not-the-Pw7-password"));
}

const HOOKS: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-migrate
  annotations:
    "helm.sh/hook": pre-install,pre-upgrade
    "helm.sh/hook-delete-policy": before-hook-creation
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: "busybox:{{ .Values.migrateTag }}"}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-announce
  annotations:
    "helm.sh/hook": post-install,post-upgrade
data: {done: "yes"}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-cleanup
  annotations:
    "helm.sh/hook": pre-delete
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: cleanup, image: busybox}]
"#;

/// `kubesync sync --output json` of the chart: the objects in the order they were applied.
fn sync_order(repo: &Path, ns: &str, tag: &str) -> Vec<String> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(["sync", "--name", "web", "-n", ns, "--output", "json"])
        .args([
            "--helm-chart",
            "charts/web",
            "--helm-values",
            &format!("tags/{tag}.yaml"),
        ])
        .arg("--repo")
        .arg(repo));
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["failure"], serde_json::Value::Null, "{out}");
    (report["objects"].as_array().expect("objects").iter())
        .map(|o| {
            format!(
                "{} {}",
                o["object"].as_str().unwrap_or_default(),
                o["result"]["action"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test]
async fn hooks_of_install_and_upgrade_run_around_the_chart_and_delete_hooks_never() {
    let ns = TestNamespace::new("helm-hooks").await;
    let repo = GitRepo::new();
    helm_create(&repo.work(), "0.1.0");
    repo.write("charts/web/templates/hooks.yaml", HOOKS);
    repo.write("tags/one.yaml", "migrateTag: \"1.36\"\n");
    repo.write("tags/two.yaml", "migrateTag: \"1.37\"\n");
    repo.commit_and_push("a chart with hooks");
    let position = |order: &[String], name: &str| {
        order
            .iter()
            .position(|o| o.contains(name))
            .unwrap_or_else(|| panic!("{name} in {order:?}"))
    };
    let order = sync_order(&repo.work(), &ns.name, "one");
    println!("{order:?}");
    let (migrate, announce) = (
        position(&order, "job.batch/web-migrate"),
        position(&order, "configmap/web-announce"),
    );
    let deployment = position(&order, "deployment.apps/web");
    assert_eq!(migrate, 0, "the pre-install hook goes first: {order:?}");
    assert_eq!(
        announce,
        order.len() - 1,
        "the post-install hook goes last: {order:?}"
    );
    assert!(migrate < deployment && deployment < announce);
    assert!(
        !order.iter().any(|o| o.contains("web-cleanup")),
        "a pre-delete hook is never applied"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(jobs.get_opt("web-cleanup").await.expect("get").is_none());
    // The hook changed (before-hook-creation): the Job is re-created, and still goes first.
    let order = sync_order(&repo.work(), &ns.name, "two");
    assert!(
        order[0].starts_with("job.batch/web-migrate") && order[0].ends_with("recreated"),
        "{order:?}"
    );
}

/// kubesync's own chart, from Git, through a GitSync: it renders as `helm template` does,
/// applies with its RBAC and the controller Deployment becomes healthy.
#[tokio::test]
async fn kubesyncs_own_chart_installs_through_a_gitsync() {
    let ns = TestNamespace::new("helm-self").await;
    install_crd(&ns.client).await;
    let release = format!("ks{}", &ns.name[ns.name.len() - 4..]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let selector = format!("app.kubernetes.io/instance={}", self.0);
            let _ = Command::new("kubectl")
                .args(["delete", "clusterrole,clusterrolebinding", "-l", &selector])
                .output();
        }
    }
    let _cleanup = Cleanup(release.clone());
    let repo = GitRepo::new();
    let chart = crate::support::repo_root().join("charts/kubesync");
    run(Command::new("cp")
        .arg("-r")
        .arg(&chart)
        .arg(repo.work().join("kubesync")));
    repo.write("values/home.yaml", "image:\n  repository: kubesync\n  tag: test\nsharding:\n  enabled: true\nreplicaCount: 2\n");
    let first = repo.commit_and_push("kubesync's chart");
    assert_chart_renders_as_helm(
        &repo.work(),
        "kubesync",
        &release,
        &ns.name,
        &["values/home.yaml"],
    );
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let spec = json!({
        "url": daemon.url(), "interval": "1h", "wait": true, "timeout": "60s",
        "helm": {"chart": "kubesync", "releaseName": release, "includeCRDs": false,
                 "valuesFiles": ["values/home.yaml"]},
    });
    let api = create_gitsync(&ns, "kubesync", spec).await;
    wait_for_revision(&api, "kubesync", &first, Duration::from_secs(90)).await;
    outcome(&api, "kubesync").await.expect("Ready and healthy");
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let deployment = deployments
        .get(&format!("{release}-kubesync"))
        .await
        .expect("the controller's Deployment");
    let args = (deployment.spec.and_then(|s| s.template.spec))
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        args.contains(&"--shards=2".to_string()),
        "values from Git: {args:?}"
    );
}

#[tokio::test]
async fn a_chart_from_an_oci_registry_with_credentials_resolves_a_range() {
    let ns = TestNamespace::new("helm-oci").await;
    install_crd(&ns.client).await;
    let registry = crate::support::servers::start_registry();
    let ca = registry.dir.path().join("ca.pem");
    let oci = format!("oci://127.0.0.1:{}/charts", registry.port);
    let build = tempfile::tempdir().expect("tempdir");
    for version in ["0.1.0", "0.1.3", "0.2.0"] {
        let dir = build.path().join(version);
        helm_create(&dir, version);
        run(Command::new("helm")
            .args(["package", "charts/web", "--destination", "."])
            .current_dir(&dir));
        run(Command::new("helm")
            .args(["push", &format!("web-{version}.tgz"), &oci])
            .args(["--username", USER, "--password", PASSWORD])
            .arg("--ca-file")
            .arg(&ca)
            .env("HELM_REGISTRY_CONFIG", build.path().join("registry.json"))
            .current_dir(&dir));
    }
    repository_secrets(
        &ns,
        &ca,
        [("registry", PASSWORD), ("wrong", "not-the-Pw8-password")],
    )
    .await;
    let repo = GitRepo::new();
    repo.write("values.yaml", "replicaCount: 1\n");
    let first = repo.commit_and_push("values");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &[]);
    let spec = |secret: &str| {
        json!({"url": daemon.url(), "interval": "1h",
               "helm": {"repoURL": oci, "chart": "web", "version": "~0.1.0",
                        "valuesFiles": ["values.yaml"], "secretRef": {"name": secret}}})
    };
    let api = create_gitsync(&ns, "web", spec("registry")).await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(90)).await;
    let chart = (api.get("web").await.expect("get").status)
        .and_then(|s| s.helm_chart)
        .expect("status.helmChart");
    assert_eq!(
        chart.version, "0.1.3",
        "~0.1.0 resolves to the newest 0.1.x tag"
    );
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let labels = (deployments.get("web").await.expect("web").metadata.labels).unwrap_or_default();
    assert_eq!(
        labels.get("helm.sh/chart").map(String::as_str),
        Some("web-0.1.3")
    );

    let wrong = create_gitsync(&ns, "wrong", spec("wrong")).await;
    let error = outcome(&wrong, "wrong")
        .await
        .expect_err("a wrong password fails");
    assert!(
        error.contains("helm pull failed") && error.contains(&oci),
        "{error}"
    );
    assert!(!error.contains("not-the-Pw8-password"), "{error}");
    assert!(!controller.log_text().contains(PASSWORD));
}

/// `valuesFrom`: values files from Git, then a Secret's and a ConfigMap's keys in order, then
/// the inline values; a missing optional one is skipped, a missing required one fails the sync
/// naming it, and a Secret's values never reach the status.
#[tokio::test]
async fn values_from_secrets_and_config_maps_apply_in_order() {
    let ns = TestNamespace::new("helm-vf").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    helm_create(&repo.work(), "0.1.0");
    repo.write("values.yaml", "replicaCount: 2\n");
    let first = repo.commit_and_push("chart");
    kubectl_apply_in(
        &ns.name,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: web-values}\nstringData:\n  values.yaml: |\n    replicaCount: 3\n    podAnnotations: {token: vf-Secret9-never-shown}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-extra}\ndata:\n  extra.yaml: |\n    replicaCount: 4\n",
    );
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let helm = |values_from: serde_json::Value| {
        json!({"url": daemon.url(), "interval": "1h",
               "helm": {"chart": "charts/web", "valuesFiles": ["values.yaml"],
                        "valuesFrom": values_from, "values": {"service": {"port": 81}}}})
    };
    let api = create_gitsync(
        &ns,
        "web",
        helm(json!([
            {"kind": "Secret", "name": "web-values"},
            {"kind": "ConfigMap", "name": "web-extra", "valuesKey": "extra.yaml"},
            {"kind": "ConfigMap", "name": "not-there", "optional": true},
        ])),
    )
    .await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(60)).await;
    assert_eq!(
        replicas(&ns).await,
        Some(4),
        "the ConfigMap comes after the Secret and the file"
    );
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let annotations = (deployments.get("web").await.expect("web").spec)
        .and_then(|s| s.template.metadata?.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations.get("token").map(String::as_str),
        Some("vf-Secret9-never-shown")
    );
    let services: Api<Service> = Api::namespaced(ns.client.clone(), &ns.name);
    let port = services
        .get("web")
        .await
        .expect("svc")
        .spec
        .expect("spec")
        .ports
        .expect("ports")[0]
        .port;
    assert_eq!(port, 81, "inline values come last");

    let missing = create_gitsync(
        &ns,
        "missing",
        helm(json!([{"kind": "Secret", "name": "absent"}])),
    )
    .await;
    let error = outcome(&missing, "missing")
        .await
        .expect_err("a required Secret is missing");
    assert!(
        error.contains(&format!("Secret {}/absent (spec.helm.valuesFrom)", ns.name)),
        "{error}"
    );
    let status = serde_json::to_string(&api.get("web").await.expect("get").status).expect("json");
    assert!(!status.contains("vf-Secret9-never-shown"));
}

fn kubectl_apply_in(namespace: &str, yaml: &str) {
    crate::support::run_with_input(
        Command::new("kubectl").args(["apply", "-n", namespace, "-f", "-"]),
        yaml,
    );
}

/// `postRender`: Kustomize patches and images over the chart's output (the real pinned
/// kustomize); a broken patch fails in the render step naming the chart.
#[tokio::test]
async fn a_chart_is_patched_by_kustomize_after_rendering() {
    let ns = TestNamespace::new("helm-post").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    helm_create(&repo.work(), "0.1.0");
    let first = repo.commit_and_push("chart");
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let spec = |patch: &str| {
        json!({"url": daemon.url(), "interval": "1h",
               "helm": {"chart": "charts/web", "postRender": {
                   "patches": [{"target": {"kind": "Deployment"}, "patch": patch}],
                   "images": [{"name": "nginx", "newTag": "1.27"}]}}})
    };
    let patch = "- op: add\n  path: /spec/template/spec/nodeSelector\n  value: {kubernetes.io/hostname: nuc}\n";
    let api = create_gitsync(&ns, "web", spec(patch)).await;
    wait_for_revision(&api, "web", &first, Duration::from_secs(60)).await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod = (deployments.get("web").await.expect("web").spec)
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("kubernetes.io/hostname")
            .map(String::as_str),
        Some("nuc"),
        "the patch applies"
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("nginx:1.27"),
        "the image is set"
    );

    let broken = create_gitsync(&ns, "broken", spec("- op: explode\n  path: /spec\n")).await;
    let error = outcome(&broken, "broken")
        .await
        .expect_err("a broken patch fails");
    assert!(
        error.contains("helm chart charts/web (postRender)"),
        "{error}"
    );
}

/// `.Capabilities` are the target cluster's: its version and the APIs its discovery serves
/// (here the GitSync CRD, which helm's defaults do not know).
#[tokio::test]
async fn capabilities_come_from_the_target_cluster() {
    let ns = TestNamespace::new("helm-caps").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write(
        "caps/Chart.yaml",
        "apiVersion: v2\nname: caps\nversion: 0.1.0\n",
    );
    repo.write(
        "caps/templates/caps.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caps}\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  gitsyncs: {{ .Capabilities.APIVersions.Has \"kubesync.dev/v1alpha1/GitSync\" | quote }}\n",
    );
    repo.commit_and_push("caps");
    let out = run(Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "render",
            "--name",
            "caps",
            "-n",
            &ns.name,
            "--helm-chart",
            "caps",
            "--repo",
        ])
        .arg(repo.work()));
    let rendered = objects(&out, &ns.name);
    let data = &rendered[&format!("v1 ConfigMap {}/caps", ns.name)]["data"];
    let server = run(Command::new("kubectl").args(["version", "-o", "json"]));
    let server: serde_json::Value = serde_json::from_str(&server).expect("json");
    assert_eq!(data["kube"], server["serverVersion"]["gitVersion"], "{out}");
    assert_eq!(
        data["gitsyncs"], "true",
        "the cluster's CRDs are in APIVersions: {out}"
    );
}
