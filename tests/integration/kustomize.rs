//! Kustomize overlays, rendered by the real pinned `kustomize` (the testbed's build, on PATH):
//! a base with two overlays and a component synced and re-synced, output equal to
//! `kustomize build` object for object, the sandbox (remote bases, `../` escapes, plugins), a
//! broken kustomization, `diff` and `render`, and the controller's render cache.
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kubesync::sync::{Step, SyncReport};
use serde_json::{Value, json};

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::faults::request_sync;
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::{ManifestDir, configmap, sync_dir};
use crate::support::sops::{age_key, sops_encrypt};
use crate::support::{TestNamespace, eventually, run};

/// The overlay repository: a base (Deployment, Service, a configMapGenerator with a hash
/// suffix), a component, and two overlays using namePrefix, namespace, images, a
/// strategic-merge patch and a JSON 6902 patch. Each overlay's namespace is a test namespace.
fn write_overlays(repo: &impl Writes, home: &str, staging: &str) {
    repo.put(
        "base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- deployment.yaml\n- service.yaml\nlabels:\n- pairs:\n    app.kubernetes.io/part-of: shop\nconfigMapGenerator:\n- name: web-config\n  envs:\n  - config/web.env\n",
    );
    repo.put("base/config/web.env", "GREETING=hello\nWORKERS=2\n");
    repo.put(
        "base/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n        envFrom:\n        - configMapRef:\n            name: web-config\n",
    );
    repo.put(
        "base/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 80\n",
    );
    repo.put(
        "components/debug/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nconfigMapGenerator:\n- name: debug-flags\n  literals:\n  - LOG_LEVEL=debug\npatches:\n- target: {kind: Deployment, name: web}\n  patch: |-\n    - op: add\n      path: /spec/template/metadata/annotations\n      value: {debug: \"true\"}\n",
    );
    repo.put(
        "overlays/home/kustomization.yaml",
        &format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {home}\nnamePrefix: home-\nresources:\n- ../../base\ncomponents:\n- ../../components/debug\nimages:\n- name: nginx\n  newName: registry.home.arpa/nginx\n  newTag: \"1.28\"\npatches:\n- path: replicas.yaml\n- path: service-port.json\n  target: {{kind: Service, name: web}}\n"),
    );
    repo.put(
        "overlays/home/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n",
    );
    repo.put(
        "overlays/home/service-port.json",
        "[{\"op\": \"replace\", \"path\": \"/spec/ports/0/port\", \"value\": 8080}]\n",
    );
    repo.put(
        "overlays/staging/kustomization.yaml",
        &format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {staging}\nnamePrefix: staging-\nresources:\n- ../../base\nimages:\n- name: nginx\n  newTag: \"1.29\"\n"),
    );
}

/// A directory or a Git work tree the overlay files are written to.
trait Writes {
    fn put(&self, path: &str, content: &str);
}

impl Writes for ManifestDir {
    fn put(&self, path: &str, content: &str) {
        self.write(path, content);
    }
}

impl Writes for GitRepo {
    fn put(&self, path: &str, content: &str) {
        self.write(path, content);
    }
}

fn paths(path: &str) -> impl FnOnce(&mut kubesync::sync::SyncOptions) {
    let path = path.to_string();
    move |o| o.target.paths = vec![path]
}

fn assert_succeeded(report: &SyncReport, what: &str) {
    assert!(
        report.succeeded(),
        "{what}: {:?}",
        report
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
}

async fn deployment(ns: &TestNamespace, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(ns.client.clone(), &ns.name)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Deployment {name}: {e}"))
}

/// The ConfigMap the Deployment's first container takes its environment from.
fn config_of(deployment: &Deployment) -> String {
    let value = serde_json::to_value(deployment).expect("json");
    value
        .pointer("/spec/template/spec/containers/0/envFrom/0/configMapRef/name")
        .and_then(Value::as_str)
        .expect("envFrom configMapRef")
        .to_string()
}

#[tokio::test]
async fn a_base_with_two_overlays_syncs_and_a_generator_change_rolls_and_prunes() {
    let home = TestNamespace::new("kz-home").await;
    let staging = TestNamespace::new("kz-staging").await;
    let dir = ManifestDir::new();
    write_overlays(&dir, &home.name, &staging.name);

    let report = sync_dir(&home, dir.path(), paths("overlays/home")).await;
    assert_succeeded(&report, "home");
    let report = sync_dir(&staging, dir.path(), paths("overlays/staging")).await;
    assert_succeeded(&report, "staging");

    let web = deployment(&home, "home-web").await;
    let value = serde_json::to_value(&web).expect("json");
    assert_eq!(value.pointer("/spec/replicas"), Some(&json!(2)));
    let container = &value["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.home.arpa/nginx:1.28");
    assert_eq!(
        value.pointer("/spec/template/metadata/annotations/debug"),
        Some(&json!("true")),
        "the component's patch"
    );
    assert_eq!(
        value.pointer("/metadata/labels/app.kubernetes.io~1part-of"),
        Some(&json!("shop"))
    );
    let first_config = config_of(&web);
    assert!(
        first_config.starts_with("home-web-config-") && first_config.len() > 16,
        "hash-suffixed generator name: {first_config}"
    );
    let configs: Api<ConfigMap> = Api::namespaced(home.client.clone(), &home.name);
    let data = configs.get(&first_config).await.expect("generated").data;
    assert_eq!(
        data.unwrap_or_default().get("GREETING").map(String::as_str),
        Some("hello")
    );
    configs
        .get("home-debug-flags")
        .await
        .expect_err("hashed, not plain");
    let service = Api::<Service>::namespaced(home.client.clone(), &home.name)
        .get("home-web")
        .await
        .expect("service");
    let port = service.spec.expect("spec").ports.expect("ports")[0].port;
    assert_eq!(port, 8080, "the JSON 6902 patch");

    let staged = serde_json::to_value(deployment(&staging, "staging-web").await).expect("json");
    assert_eq!(staged["spec"]["replicas"], 1);
    assert_eq!(
        staged["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.29"
    );
    assert!(
        staged
            .pointer("/spec/template/metadata/annotations/debug")
            .is_none()
    );

    // The generator's input changes: a new hashed ConfigMap, the Deployment rolls to it, and
    // the old ConfigMap left Git and is pruned.
    dir.write("base/config/web.env", "GREETING=bonjour\nWORKERS=2\n");
    let report = sync_dir(&home, dir.path(), paths("overlays/home")).await;
    assert_succeeded(&report, "home after the change");
    let rolled = deployment(&home, "home-web").await;
    let second_config = config_of(&rolled);
    assert_ne!(second_config, first_config);
    assert!(
        rolled.metadata.generation > web.metadata.generation,
        "the pod template changed"
    );
    let pruned: Vec<&str> = (report.objects.iter())
        .filter(|o| matches!(o.result, kubesync::sync::Action::Pruned))
        .map(|o| o.object.as_str())
        .collect();
    assert_eq!(
        pruned,
        vec![format!("configmap/{first_config} -n {}", home.name)]
    );
    configs
        .get(&first_config)
        .await
        .expect_err("old ConfigMap pruned");
    let data = configs.get(&second_config).await.expect("new").data;
    assert_eq!(
        data.unwrap_or_default().get("GREETING").map(String::as_str),
        Some("bonjour")
    );
}

/// `kubesync render` of `path` equals `kustomize build` of it, object for object, once
/// kubesync's own marks (the ApplySet label and its annotations) are taken out.
fn assert_render_equals_kustomize(repo: &Path, path: &str, namespace: &str, extra: &[&str]) {
    let rendered = run(Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "render",
            "--show-secrets",
            "--name",
            "eq",
            "-n",
            namespace,
            "--path",
            path,
        ])
        .arg("--repo")
        .arg(repo)
        .args(extra));
    let built = run(Command::new("kustomize").arg("build").arg(repo.join(path)));
    let ours = objects(&rendered, namespace);
    let theirs = objects(&built, namespace);
    assert!(!theirs.is_empty(), "{path}: kustomize printed nothing");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{path}: the same objects"
    );
    for (key, theirs) in &theirs {
        assert_eq!(&ours[key], theirs, "{path}: {key}");
    }
}

/// Objects by `apiVersion kind namespace/name`, without kubesync's marks; an object without a
/// namespace gets `namespace` (render fills in the default namespace).
pub fn objects(yaml: &str, namespace: &str) -> std::collections::BTreeMap<String, Value> {
    let manifests = kubesync::manifests::parse_file("out.yaml", yaml.as_bytes())
        .unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    let mut out = std::collections::BTreeMap::new();
    for manifest in manifests {
        let mut object = manifest.object;
        let meta = object["metadata"].as_object_mut().expect("metadata");
        for (field, prefix) in [
            ("labels", "applyset.kubernetes.io/"),
            ("annotations", "kubesync.dev/"),
        ] {
            if let Some(map) = meta.get_mut(field).and_then(Value::as_object_mut) {
                map.retain(|k, _| !k.starts_with(prefix));
                if map.is_empty() {
                    meta.remove(field);
                }
            }
        }
        meta.entry("namespace").or_insert(json!(namespace));
        let key = format!(
            "{} {} {}/{}",
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default(),
        );
        out.insert(key, object);
    }
    out
}

#[tokio::test]
async fn render_equals_kustomize_build_and_diff_shows_an_overlay_change() {
    let ns = TestNamespace::new("kz-render").await;
    let dir = ManifestDir::new();
    write_overlays(&dir, &ns.name, &ns.name);
    for path in ["overlays/home", "overlays/staging", "base"] {
        assert_render_equals_kustomize(dir.path(), path, &ns.name, &[]);
    }

    let report = sync_dir(&ns, dir.path(), paths("overlays/home")).await;
    assert_succeeded(&report, "home");
    dir.write(
        "overlays/home/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "diff",
            "--name",
            &ns.name,
            "-n",
            &ns.name,
            "--path",
            "overlays/home",
        ])
        .arg("--repo")
        .arg(dir.path())
        .output()
        .expect("kubesync diff runs");
    let diff = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "differences: {stderr}");
    assert!(diff.contains("deployment.apps/home-web"), "{diff}");
    assert!(
        diff.contains("-  replicas: 2") && diff.contains("+  replicas: 3"),
        "{diff}"
    );
    assert!(
        !diff.contains("home-web-config"),
        "unchanged objects are not shown: {diff}"
    );
}

/// A loopback HTTP server answering every request with `body`; counts the requests.
fn serve(body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (port, hits)
}

/// The sync failed in the render step before applying anything, and says `says`.
fn assert_refused(report: &SyncReport, says: &[&str]) {
    assert_eq!(report.failure, Some(Step::Render), "{:?}", report.errors);
    assert_eq!(report.summary.created + report.summary.configured, 0);
    let message = report
        .errors
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    for part in says {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
}

#[tokio::test]
async fn remote_bases_escapes_and_plugins_are_refused() {
    let ns = TestNamespace::new("kz-sandbox").await;
    let dir = ManifestDir::new();
    dir.write("plain/cm.yaml", &configmap("plain", "1"));
    let (port, hits) =
        serve("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: remote\ndata:\n  from: http\n");
    let url = format!("http://127.0.0.1:{port}/cm.yaml");
    dir.write(
        "remote/kustomization.yaml",
        &format!("resources:\n- {url}\n"),
    );
    let both = |path: &str| {
        let path = path.to_string();
        move |o: &mut kubesync::sync::SyncOptions| o.target.paths = vec!["plain".into(), path]
    };

    // A remote resource: refused, the server never asked; allowed, fetched and applied.
    let report = sync_dir(&ns, dir.path(), both("remote")).await;
    assert_refused(
        &report,
        &["remote/kustomization.yaml", &url, "allowRemoteBases"],
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing fetched");
    let report = sync_dir(&ns, dir.path(), |o| {
        o.target.paths = vec!["plain".into(), "remote".into()];
        o.target.kustomize.allow_remote_bases = true;
    })
    .await;
    assert_succeeded(&report, "remote allowed");
    assert!(hits.load(Ordering::SeqCst) >= 1);
    let configs: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    configs.get("remote").await.expect("the remote ConfigMap");
    assert_render_equals_kustomize(
        dir.path(),
        "remote",
        &ns.name,
        &["--kustomize-allow-remote-bases"],
    );

    // A base outside the repository: Kustomize alone builds it; kubesync refuses.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        outside.path().join("kustomization.yaml"),
        "resources: [cm.yaml]\n",
    )
    .expect("write");
    std::fs::write(
        outside.path().join("cm.yaml"),
        configmap("outside", "secret"),
    )
    .expect("write");
    assert_eq!(outside.path().parent(), dir.path().parent(), "siblings");
    let name = outside
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let escape = format!("../../{name}");
    dir.write(
        "escape/kustomization.yaml",
        &format!("resources:\n- {escape}\n"),
    );
    let built = run(Command::new("kustomize")
        .arg("build")
        .arg(dir.path().join("escape")));
    assert!(
        built.contains("name: outside"),
        "kustomize alone follows {escape}"
    );
    let report = sync_dir(&ns, dir.path(), both("escape")).await;
    assert_refused(
        &report,
        &[
            "escape/kustomization.yaml",
            &escape,
            "outside the repository",
        ],
    );

    // An exec plugin (a KRM function): refused before Kustomize runs.
    dir.write(
        "plugin/kustomization.yaml",
        "resources: [cm.yaml]\ntransformers: [sed.yaml]\n",
    );
    dir.write("plugin/cm.yaml", &configmap("plugged", "1"));
    dir.write(
        "plugin/sed.yaml",
        "apiVersion: example.com/v1\nkind: Sed\nmetadata:\n  name: sed\n  annotations:\n    config.kubernetes.io/function: |\n      exec:\n        path: /bin/sh\n",
    );
    let report = sync_dir(&ns, dir.path(), both("plugin")).await;
    assert_refused(
        &report,
        &["plugin/kustomization.yaml", "transformers", "plugin"],
    );
    for refused in ["outside", "plugged"] {
        configs
            .get(refused)
            .await
            .expect_err("nothing of a refused render is applied");
    }
    // The sync that allowed the remote base left its objects; no refusal pruned them.
    configs.get("remote").await.expect("still there");
    configs.get("plain").await.expect("still there");
}

#[tokio::test]
async fn a_broken_kustomization_fails_naming_its_file_and_prunes_nothing() {
    let ns = TestNamespace::new("kz-broken").await;
    let dir = ManifestDir::new();
    write_overlays(&dir, &ns.name, &ns.name);
    let report = sync_dir(&ns, dir.path(), paths("overlays/home")).await;
    assert_succeeded(&report, "home");
    let before = report.summary.created;

    // A patch whose target is not there: Kustomize's own error, under the overlay's file.
    dir.write(
        "overlays/home/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nowhere\nspec:\n  replicas: 3\n",
    );
    let report = sync_dir(&ns, dir.path(), paths("overlays/home")).await;
    let says = [
        "overlays/home/kustomization.yaml",
        "kustomize build failed",
        "nowhere",
    ];
    assert_refused(&report, &says);
    let blocked = Some(kubesync::sync::PruneBlocked::Failure);
    assert_eq!(report.prune_blocked, blocked);
    let message = report.errors[0].to_string();
    let root = dir.path().display().to_string();
    assert!(
        !message.contains(&root),
        "paths are repo-relative: {message}"
    );
    // A file that left the base: named with the kustomization that lists it.
    dir.write(
        "overlays/home/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
    );
    dir.remove("base/service.yaml");
    let report = sync_dir(&ns, dir.path(), paths("overlays/home")).await;
    assert_refused(
        &report,
        &["base/kustomization.yaml", "service.yaml", "does not exist"],
    );
    assert_eq!(report.prune_blocked, blocked);
    deployment(&ns, "home-web").await;
    Api::<Service>::namespaced(ns.client.clone(), &ns.name)
        .get("home-web")
        .await
        .expect("nothing pruned");
    assert!(before >= 4, "{before}");

    // Forced on, a path without a kustomization is an error of its own.
    dir.write("flat/cm.yaml", &configmap("flat", "1"));
    let report = sync_dir(&ns, dir.path(), |o| {
        o.target.paths = vec!["flat".into()];
        o.target.kustomize.mode = kubesync::kustomize::KustomizeMode::Always;
    })
    .await;
    assert_eq!(report.failure, Some(Step::Manifests), "{:?}", report.errors);
    assert!(
        report.errors[0]
            .to_string()
            .contains("path flat: no kustomization.yaml")
    );
}

/// `kubesync_render_duration_seconds_count` of one GitSync.
fn renders(controller: &ControllerProcess, ns: &str, name: &str) -> f64 {
    controller.metric(&format!(
        "kubesync_render_duration_seconds_count{{sync=\"{ns}/{name}\"}}"
    ))
}

#[tokio::test]
async fn the_controller_renders_once_per_revision() {
    let ns = TestNamespace::new("kz-ctl").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    write_overlays(&repo, &ns.name, &ns.name);
    let first = repo.commit_and_push("overlays");
    let daemon = GitDaemon::start(repo.root.path());
    let controller = ControllerProcess::start(&ns.name, &["--full-sync-every", "1"]);
    let api = create_gitsync(
        &ns,
        "home",
        json!({"url": daemon.url(), "path": "overlays/home", "interval": "1h"}),
    )
    .await;
    wait_for_revision(&api, "home", &first, Duration::from_secs(60)).await;
    deployment(&ns, "home-web").await;
    assert_eq!(renders(&controller, &ns.name, "home"), 1.0);

    // The same revision again: the render comes from the cache.
    let runs = format!(
        "kubesync_sync_runs_total{{sync=\"{}/home\",result=\"success\"}}",
        ns.name
    );
    request_sync(&api, "home", "again").await;
    eventually(Duration::from_secs(30), "a second sync", || async {
        (controller.metric(&runs) >= 2.0).then_some(())
    })
    .await;
    assert_eq!(
        renders(&controller, &ns.name, "home"),
        1.0,
        "rendered from the cache"
    );

    // Drift on a rendered object is repaired from the cached render of the applied revision.
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let scale = json!({"spec": {"replicas": 5}});
    eventually(Duration::from_secs(30), "the watches are up", || async {
        let watched = format!("kubesync_watched_objects{{sync=\"{}/home\"}}", ns.name);
        (controller.metric(&watched) > 0.0).then_some(())
    })
    .await;
    deployments
        .patch(
            "home-web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&scale),
        )
        .await
        .expect("scale by hand");
    eventually(Duration::from_secs(30), "Git's replicas again", || async {
        let replicas = deployments.get("home-web").await.ok()?.spec?.replicas;
        (replicas == Some(2)).then_some(())
    })
    .await;
    // The repair is counted just after its apply returns: wait for the count, not only the object.
    let repairs = format!("kubesync_drift_repairs_total{{sync=\"{}/home\"}}", ns.name);
    eventually(Duration::from_secs(10), "the repair is counted", || async {
        (controller.metric(&repairs) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        renders(&controller, &ns.name, "home"),
        1.0,
        "the repair rendered nothing"
    );

    // A new revision renders again; a broken one fails in the render step.
    repo.write("base/config/web.env", "GREETING=hi\n");
    let second = repo.commit_and_push("greeting");
    request_sync(&api, "home", "second").await;
    wait_for_revision(&api, "home", &second, Duration::from_secs(60)).await;
    assert_eq!(renders(&controller, &ns.name, "home"), 2.0);
    repo.write(
        "overlays/home/kustomization.yaml",
        "resources: [../../nowhere]\n",
    );
    repo.commit_and_push("broken");
    request_sync(&api, "home", "broken").await;
    let failures = format!(
        "kubesync_render_failures_total{{sync=\"{}/home\"}}",
        ns.name
    );
    eventually(Duration::from_secs(60), "a render failure", || async {
        (controller.metric(&failures) >= 1.0).then_some(())
    })
    .await;
    let status = api.get("home").await.expect("get").status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "RenderFailed");
    assert!(
        ready.message.contains("overlays/home/kustomization.yaml"),
        "{}",
        ready.message
    );
    assert_eq!(
        status.last_applied_revision.as_deref(),
        Some(second.as_str())
    );
    deployment(&ns, "home-web").await;
}

/// Every file under `dir` (repo-relative name → bytes), README.md left out.
fn files_of(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name() != "README.md" {
                let name = path
                    .strip_prefix(dir)
                    .expect("inside")
                    .display()
                    .to_string();
                files.insert(name, std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

#[tokio::test]
async fn the_homelab_overlays_example_renders_as_kustomize_does_and_syncs() {
    let example = crate::support::repo_root().join("examples/homelab-overlays");
    let mut base = files_of(&example.join("base"));
    assert!(base.remove("kustomization.yaml").is_some());
    let plain = files_of(&crate::support::repo_root().join("examples/homelab"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>(),
        "the base holds the files of examples/homelab"
    );
    for (name, bytes) in &plain {
        assert!(
            &base[name] == bytes,
            "base/{name} differs from examples/homelab/{name}"
        );
    }

    let home = TestNamespace::new("kz-ex-home").await;
    let staging = TestNamespace::new("kz-ex-staging").await;
    for (ns, overlay) in [(&home, "overlays/home"), (&staging, "overlays/staging")] {
        assert_render_equals_kustomize(&example, overlay, &ns.name, &[]);
        let report = sync_dir(ns, &example, paths(overlay)).await;
        assert_succeeded(&report, overlay);
    }
    let rails = serde_json::to_value(deployment(&home, "rails").await).expect("json");
    let image = &rails["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "docker.io/library/ruby:3.3.6-slim");
    let cronjobs = |ns: &TestNamespace| {
        Api::<k8s_openapi::api::batch::v1::CronJob>::namespaced(ns.client.clone(), &ns.name)
    };
    cronjobs(&home)
        .get("postgres-backup")
        .await
        .expect("home backs up");
    cronjobs(&staging)
        .get("postgres-backup")
        .await
        .expect_err("staging does not");
    let rails = serde_json::to_value(deployment(&staging, "rails").await).expect("json");
    assert_eq!(rails["spec"]["replicas"], 1);
    assert_eq!(rails["metadata"]["labels"]["environment"], "staging");
    let ingress = Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(
        staging.client.clone(),
        &staging.name,
    )
    .get("homelab")
    .await
    .expect("ingress");
    let rules = ingress.spec.and_then(|s| s.rules).unwrap_or_default();
    assert_eq!(rules[0].host.as_deref(), Some("staging.home.arpa"));
}

#[tokio::test]
async fn sops_files_a_kustomization_lists_are_decrypted_with_their_mac_checked() {
    const PASSWORD: &str = "kz-s0ps-value-never-shown";
    let ns = TestNamespace::new("kz-sops").await;
    let dir = ManifestDir::new();
    let keys = tempfile::tempdir().expect("keys");
    let (key, stranger) = (age_key(keys.path(), "key"), age_key(keys.path(), "other"));
    dir.write(
        "sealed/plain.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {PASSWORD}\n  port: \"5432\"\n"),
    );
    // Everything encrypted (sops's default): Kustomize could not read the kind; refused.
    let whole = sops_encrypt(&dir.path().join("sealed/plain.yaml"), &[&key], &[]);
    let values_only = ["--encrypted-regex", "^(data|stringData)$"];
    let encrypted = sops_encrypt(&dir.path().join("sealed/plain.yaml"), &[&key], &values_only);
    dir.remove("sealed/plain.yaml");
    dir.write("sealed/secret.enc.yaml", &whole);
    dir.write(
        "sealed/kustomization.yaml",
        "namePrefix: home-\nresources: [secret.enc.yaml]\nlabels:\n- pairs: {environment: home}\n",
    );
    let with = |keys: kubesync::sops::Keys| {
        move |o: &mut kubesync::sync::SyncOptions| {
            o.target.paths = vec!["sealed".into()];
            o.target.decryption = keys;
        }
    };

    let report = sync_dir(&ns, dir.path(), with(key.keys())).await;
    assert_refused(&report, &["sealed/secret.enc.yaml", "encrypted_regex"]);

    // Values only (as the tutorial's .sops.yaml), with a key that does not open it: the
    // encrypted file is named, nothing applied.
    dir.write("sealed/secret.enc.yaml", &encrypted);
    let report = sync_dir(&ns, dir.path(), with(stranger.keys())).await;
    assert_refused(&report, &["sealed/secret.enc.yaml", "cannot decrypt"]);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ns.client.clone(), &ns.name);
    secrets.get("home-db").await.expect_err("nothing applied");

    // The right key: Kustomize's changes (prefix, label) and the plain values, together.
    let report = sync_dir(&ns, dir.path(), with(key.keys())).await;
    assert_succeeded(&report, "sealed");
    assert!(
        !format!("{report:?}").contains(PASSWORD),
        "no plain value in the report"
    );
    let secret = secrets.get("home-db").await.expect("applied");
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.get("password").map(|b| b.0.as_slice()),
        Some(PASSWORD.as_bytes())
    );
    assert_eq!(data.get("port").map(|b| b.0.as_slice()), Some(&b"5432"[..]));
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("environment").map(String::as_str), Some("home"));

    // Ciphertext that no listed file holds (written into a patch) is refused, not applied.
    dir.write(
        "sealed/kustomization.yaml",
        "namePrefix: home-\nresources: [secret.enc.yaml]\npatches:\n- path: extra.yaml\n",
    );
    dir.write(
        "sealed/extra.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {other: \"ENC[AES256_GCM,data:AAAA,iv:BBBB,tag:CCCC,type:str]\"}\n",
    );
    let report = sync_dir(&ns, dir.path(), with(key.keys())).await;
    assert_refused(
        &report,
        &[
            "sealed/kustomization.yaml",
            "no file listed under resources",
        ],
    );
}
