//! The local control plane itself: it is real, serves v1.36, runs workloads on the fake node,
//! finishes namespace deletion, behaves like a home cluster (a /16 of Service IPs, a default
//! StorageClass with a real provisioner, Pods that can be made to fail), and `down` stops exactly
//! what `up` started.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
        ("KUBESYNC_TESTBED_ETCD_PORT", "25790".into()),
        ("KUBESYNC_TESTBED_ETCD_PEER_PORT", "25800".into()),
        ("KUBESYNC_TESTBED_APISERVER_PORT", "27443".into()),
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
        6,
        "etcd, apiserver, controller-manager, scheduler, kwok, provisioner"
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

/// k3s hands out Service IPs from a /16; so does the testbed. 2,000 ordinary (not headless)
/// Services all get a distinct cluster IP inside 10.43.0.0/16.
#[tokio::test]
async fn two_thousand_services_get_cluster_ips() {
    let ns = TestNamespace::new("tb-svc").await;
    let api: Api<Service> = Api::namespaced(ns.client.clone(), &ns.name);
    let count = 2000;
    let ips: Vec<String> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": format!("a{i}")}, "ports": [{"port": 80}]}
                }))
                .expect("service");
                let created = api.create(&PostParams::default(), &svc).await?;
                Ok::<_, kube::Error>(created.spec.and_then(|s| s.cluster_ip).unwrap_or_default())
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("creating {count} Services: {e}"));
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        count,
        "every Service has its own cluster IP"
    );
    for ip in &ips {
        let addr: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|_| panic!("cluster IP {ip:?} is an IPv4 address"));
        assert_eq!(
            addr.octets()[..2],
            [10, 43],
            "{ip} is inside the 10.43.0.0/16 Service range"
        );
    }
}

/// The folder the testbed's provisioner keeps volumes in (as `tests/testbed/lib.sh` says).
fn volume_root() -> PathBuf {
    let state = std::env::var_os("KUBESYNC_TESTBED_STATE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("kubesync-testbed"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/kubesync-testbed"))
        })
        .expect("HOME is set");
    state.join("volumes")
}

/// A claim with no StorageClass gets the default one (`local-path`, late binding as on k3s): it
/// binds once a Pod uses it, to a fresh folder; deleting the claim removes volume and folder.
#[tokio::test]
async fn a_claim_binds_to_a_provisioned_folder_that_goes_with_it() {
    let ns = TestNamespace::new("tb-pvc").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ns.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let volumes: Api<PersistentVolume> = Api::all(ns.client.clone());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("claim");
    let created = claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("create claim");
    assert_eq!(
        created.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("local-path"),
        "the default StorageClass is filled in"
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "user"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox:1.36",
                "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let volume_name = eventually(Duration::from_secs(60), "the claim to bind", || async {
        let c = claims.get("data").await.ok()?;
        let bound = c.status.as_ref()?.phase.as_deref() == Some("Bound");
        bound.then(|| c.spec?.volume_name).flatten()
    })
    .await;
    let volume = volumes.get(&volume_name).await.expect("the bound volume");
    let path = PathBuf::from(
        volume
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| h.path.clone())
            .expect("a hostPath volume"),
    );
    assert_eq!(path.parent(), Some(volume_root().as_path()), "{path:?}");
    assert!(path.is_dir(), "the volume's folder {path:?} exists");
    eventually(
        Duration::from_secs(60),
        "the pod to run with its volume",
        || async {
            let p = pods.get("user").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;

    pods.delete("user", &DeleteParams::default())
        .await
        .expect("delete pod");
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete claim");
    eventually(
        Duration::from_secs(60),
        "the volume and its folder to go",
        || async {
            let gone = volumes.get_opt(&volume_name).await.ok()?.is_none();
            (gone && !path.exists()).then_some(())
        },
    )
    .await;
}

async fn pod_with(ns: &TestNamespace, name: &str, behaviour: &str) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"testbed.kubesync.dev/pod": behaviour}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    pods
}

fn ready(pod: &Pod) -> Option<bool> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(ready.status == "True")
}

/// The kwok stages in tests/testbed/kwok-stages.yaml: a Pod can be made to never become Ready,
/// to crash-loop, to fail, or to become Ready only after a delay; an ordinary Pod is Ready.
#[tokio::test]
async fn pods_misbehave_when_annotated() {
    let ns = TestNamespace::new("tb-stages").await;

    let pods = pod_with(&ns, "not-ready", "not-ready").await;
    let pod = eventually(Duration::from_secs(60), "a Running pod", || async {
        let p = pods.get("not-ready").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    assert_eq!(
        ready(&pod),
        Some(false),
        "Running but not Ready: {:?}",
        pod.status
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = pods.get("not-ready").await.expect("pod");
    assert_eq!(ready(&later), Some(false), "still not Ready after 3 s");

    let pods = pod_with(&ns, "crashing", "crash-loop").await;
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
    };
    let pod = eventually(Duration::from_secs(60), "a crash-looping pod", || async {
        let p = pods.get("crashing").await.ok()?;
        (restarts(&p)? >= 1).then_some(p)
    })
    .await;
    let waiting = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone());
    assert_eq!(waiting.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(ready(&pod), Some(false));
    eventually(
        Duration::from_secs(30),
        "the restart count to keep rising",
        || async {
            let p = pods.get("crashing").await.ok()?;
            (restarts(&p)? >= 3).then_some(())
        },
    )
    .await;

    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "doomed"},
        "spec": {"backoffLimit": 1, "template": {
            "metadata": {"annotations": {"testbed.kubesync.dev/pod": "fail"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}
        }}
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    eventually(Duration::from_secs(90), "the Job to fail", || async {
        let j = jobs.get("doomed").await.ok()?;
        j.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True")
            .then_some(())
    })
    .await;
    let job_pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default().labels("job-name=doomed"))
        .await
        .expect("list job pods");
    assert!(
        job_pods.items.len() >= 2,
        "the Job retried its failed Pod: {} pods",
        job_pods.items.len()
    );
    for p in &job_pods.items {
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed")
        );
    }

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let slow: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow", "annotations": {"testbed.kubesync.dev/ready-after": "3s"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .expect("pod");
    let started = std::time::Instant::now();
    pods.create(&PostParams::default(), &slow)
        .await
        .expect("create pod");
    eventually(
        Duration::from_secs(60),
        "the slow pod to become Ready",
        || async { ready(&pods.get("slow").await.ok()?)?.then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "ready-after: 3s held the Pod back ({:?})",
        started.elapsed()
    );
}
