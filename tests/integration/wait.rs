//! `kubesync sync --wait` against Pods that fail on purpose (the testbed's kwok stages): the sync
//! fails naming the unhealthy object, and nothing is pruned.
use std::path::Path;
use std::process::Output;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::support::manifests::{ManifestDir, configmap};
use crate::support::{TestNamespace, output_text};

fn sync_and_wait(repo: &Path, ns: &str, timeout: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(["sync", "--repo"])
        .arg(repo)
        .args([
            "--name",
            ns,
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            timeout,
        ])
        .output()
        .expect("run kubesync sync")
}

fn deployment(annotations: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{{annotations}}}
    spec:
      containers: [{{name: web, image: nginx:1.27}}]
"
    )
}

const FAILING_JOB: &str = "apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {testbed.kubesync.dev/pod: fail}
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: busybox:1.36}]
";

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_fails_the_wait_and_prunes_nothing() {
    let ns = TestNamespace::new("wait-crash").await;
    let repo = ManifestDir::new();
    repo.write("web.yaml", &deployment(""))
        .write("old.yaml", &configmap("old", "x"));
    let healthy = sync_and_wait(repo.path(), &ns.name, "60s");
    assert!(
        healthy.status.success(),
        "a healthy rollout passes --wait: {}{}",
        String::from_utf8_lossy(&healthy.stdout),
        String::from_utf8_lossy(&healthy.stderr)
    );

    // The next commit crash-loops the Deployment's Pods and drops a ConfigMap.
    repo.write(
        "web.yaml",
        &deployment("testbed.kubesync.dev/pod: crash-loop"),
    );
    repo.remove("old.yaml");
    let broken = sync_and_wait(repo.path(), &ns.name, "8s");
    let output = output_text(&broken);
    assert!(!broken.status.success(), "the wait fails: {output}");
    assert!(
        output.contains(&format!("deployment.apps/web -n {}", ns.name))
            && output.contains("not healthy"),
        "the unhealthy Deployment is named: {output}"
    );
    assert!(
        output.contains("not pruning"),
        "the report says prune was blocked: {output}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        configmaps.get_opt("old").await.expect("get").is_some(),
        "nothing is pruned after a failed wait"
    );
}

#[tokio::test]
async fn a_failed_job_fails_the_wait_at_once_and_prunes_nothing() {
    let ns = TestNamespace::new("wait-job").await;
    let repo = ManifestDir::new();
    repo.write("old.yaml", &configmap("old", "x"));
    let first = sync_and_wait(repo.path(), &ns.name, "30s");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    repo.write("job.yaml", FAILING_JOB);
    repo.remove("old.yaml");
    let started = std::time::Instant::now();
    let broken = sync_and_wait(repo.path(), &ns.name, "90s");
    let output = output_text(&broken);
    assert!(!broken.status.success(), "the wait fails: {output}");
    assert!(
        output.contains(&format!("job.batch/migrate -n {}", ns.name))
            && output.contains("job failed"),
        "the failed Job is named with its reason: {output}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "a Job that failed for good ends the wait before its timeout ({:?})",
        started.elapsed()
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        configmaps.get_opt("old").await.expect("get").is_some(),
        "nothing is pruned after a failed wait"
    );
}
