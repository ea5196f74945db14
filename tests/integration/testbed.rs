//! The local control plane itself: it is real, serves v1.36, runs workloads on the fake node,
//! finishes namespace deletion, and `down` stops exactly what `up` started.
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::{TestNamespace, client, eventually, repo_root, unique_name};

#[tokio::test]
async fn readyz_answers_ok() {
    let client = client().await;
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("request");
    let body = client.request_text(req).await.expect("GET /readyz");
    assert_eq!(body.trim(), "ok");
}

#[tokio::test]
async fn server_reports_kubernetes_1_36() {
    let info = client()
        .await
        .apiserver_version()
        .await
        .expect("GET /version");
    assert!(
        info.git_version.starts_with("v1.36."),
        "server reports {}",
        info.git_version
    );
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "36"));
}

#[tokio::test]
async fn two_replica_deployment_becomes_available() {
    let ns = TestNamespace::new("tb-deploy").await;
    let api: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    }))
    .expect("deployment");
    api.create(&PostParams::default(), &deploy)
        .await
        .expect("create deployment");
    eventually(
        Duration::from_secs(90),
        "deployment web Available with 2 ready replicas",
        || async {
            let d = api.get("web").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.available_replicas == Some(2)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn job_reaches_complete() {
    let ns = TestNamespace::new("tb-job").await;
    let api: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "once", "image": "busybox:1.36", "command": ["true"]}]
            }}
        }
    }))
    .expect("job");
    api.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    eventually(Duration::from_secs(90), "job once Complete", || async {
        let j = api.get("once").await.ok()?;
        j.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn namespace_deletion_finishes() {
    let client = client().await;
    let name = unique_name("tb-nsdel");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually(
        Duration::from_secs(60),
        "namespace to disappear",
        || async {
            match namespaces.get_opt(&name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn server_side_apply_records_kubesync_field_manager() {
    let ns = TestNamespace::new("tb-ssa").await;
    let api: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let desired = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello"}
    });
    let params = PatchParams::apply(kubesync::FIELD_MANAGER).force();
    let applied = api
        .patch("settings", &params, &Patch::Apply(&desired))
        .await
        .expect("apply");
    let entry = applied
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("kubesync"))
        .cloned()
        .expect("a managedFields entry for kubesync");
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_string(&entry.fields_v1).expect("fieldsV1");
    assert!(
        fields.contains("f:greeting"),
        "kubesync owns data.greeting: {fields}"
    );
}

/// A second testbed on other ports and another state directory: `up` is idempotent, and `down`
/// stops every process `up` started and removes the state.
#[tokio::test]
async fn down_stops_every_process_up_started() {
    let state = tempfile::tempdir().expect("tempdir");
    let env = [
        (
            "KUBESYNC_TESTBED_STATE",
            state.path().join("tb").display().to_string(),
        ),
        ("KUBESYNC_TESTBED_ETCD_PORT", "33790".into()),
        ("KUBESYNC_TESTBED_ETCD_PEER_PORT", "33800".into()),
        ("KUBESYNC_TESTBED_APISERVER_PORT", "36443".into()),
        ("KUBESYNC_TESTBED_KCM_PORT", "30257".into()),
        ("KUBESYNC_TESTBED_SCHEDULER_PORT", "30259".into()),
    ];
    let run = |script: &str| {
        let out = std::process::Command::new(repo_root().join("tests/testbed").join(script))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running testbed script");
        assert!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run("up");
    let lines: Vec<&str> = first.lines().collect();
    assert!(lines.len() >= 2, "up printed: {first}");
    assert!(
        lines[lines.len() - 2].starts_with("export KUBECONFIG="),
        "up printed: {first}"
    );
    assert!(
        lines[lines.len() - 1].starts_with("export PATH="),
        "up printed: {first}"
    );
    let pids_dir = state.path().join("tb/pids");
    let pids: Vec<i32> = std::fs::read_dir(&pids_dir)
        .expect("pids dir")
        .map(|e| {
            std::fs::read_to_string(e.expect("entry").path())
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect();
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    let second = run("up");
    assert_eq!(first, second, "a second up only prints the environment");
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} runs before down"
        );
    }
    run("down");
    for pid in &pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None).is_ok();
        let zombie_or_gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true);
        assert!(!alive || zombie_or_gone, "pid {pid} still runs after down");
    }
    assert!(
        !state.path().join("tb").exists(),
        "down removes the state directory"
    );
}
