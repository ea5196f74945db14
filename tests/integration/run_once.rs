//! Run-once Jobs: a Job that finished under the set is not created again when it disappears,
//! until its manifest changes. kwok completes the Jobs' Pods; the testbed's
//! kube-controller-manager runs the Job and TTL controllers.
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kubesync::run_once::{JOBS_ANNOTATION, RAN_ONCE};
use kubesync::sync::Action;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::{ManifestDir, result_of, sync_dir};
use crate::support::{TestNamespace, eventually, run};

fn job(name: &str, image: &str, ttl: Option<u32>) -> String {
    let ttl = ttl
        .map(|t| format!("  ttlSecondsAfterFinished: {t}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{ttl}  backoffLimit: 0\n  template:\n    \
         spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: \"{image}\"}}]\n"
    )
}

async fn complete(api: &Api<Job>, name: &str) -> Option<()> {
    let job = api.get_opt(name).await.ok()??;
    let conditions = job.status?.conditions?;
    conditions
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True")
        .then_some(())
}

/// Every Job uid created in the namespace while the test runs.
fn record_job_uids(api: Api<Job>) -> Arc<Mutex<BTreeSet<String>>> {
    let uids = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = uids.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(job) = item
                && let Some(uid) = job.metadata.uid
            {
                seen.lock().expect("lock").insert(uid);
            }
        }
    });
    uids
}

fn count(uids: &Mutex<BTreeSet<String>>) -> usize {
    uids.lock().expect("lock").len()
}

#[tokio::test]
async fn a_finished_job_deleted_by_hand_is_not_run_again_until_its_manifest_changes() {
    let ns = TestNamespace::new("run-once").await;
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let dir = ManifestDir::new();
    dir.write("migrate.yaml", &job("migrate", "app:1", None));
    let object = format!("job.batch/migrate -n {}", ns.name);
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert_eq!(result_of(&report, &object), &Action::Created);
    eventually(Duration::from_secs(30), "the Job completes", || {
        complete(&jobs, "migrate")
    })
    .await;
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert_eq!(result_of(&report, &object), &Action::Unchanged);

    run(Command::new("kubectl").args(["-n", &ns.name, "delete", "job", "migrate"]));
    for round in 0..3 {
        let report = sync_dir(&ns, dir.path(), |_| {}).await;
        assert!(report.succeeded(), "{:?}", report.errors);
        assert_eq!(
            result_of(&report, &object),
            &Action::Skipped(RAN_ONCE.into()),
            "sync {round}"
        );
        assert!(
            jobs.get_opt("migrate").await.expect("get").is_none(),
            "not re-created"
        );
    }

    dir.write("migrate.yaml", &job("migrate", "app:2", None));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert_eq!(
        result_of(&report, &object),
        &Action::Created,
        "a new manifest runs again"
    );
    eventually(Duration::from_secs(30), "the new Job completes", || {
        complete(&jobs, "migrate")
    })
    .await;
    // Changed again while the finished Job is still there: deleted and run anew.
    dir.write("migrate.yaml", &job("migrate", "app:3", None));
    let report = sync_dir(&ns, dir.path(), |_| {}).await;
    assert_eq!(
        result_of(&report, &object),
        &Action::Recreated,
        "{:?}",
        report.errors
    );
    let image = jobs
        .get("migrate")
        .await
        .expect("job")
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("app:3"));
}

#[tokio::test]
async fn a_ttl_job_runs_once_across_intervals_and_again_after_its_image_changes() {
    let ns = TestNamespace::new("run-once-ttl").await;
    install_crd(&ns.client).await;
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let uids = record_job_uids(jobs.clone());
    let repo = GitRepo::new();
    repo.write("jobs/report.yaml", &job("report", "batch:1", Some(2)));
    let revision = repo.commit_and_push("a nightly report, once");
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "jobs",
        json!({"url": daemon.url(), "path": "jobs", "interval": "3s"}),
    )
    .await;
    wait_for_revision(&api, "jobs", &revision, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "the TTL deletes the finished Job",
        || async {
            (count(&uids) == 1 && jobs.get_opt("report").await.ok()?.is_none()).then_some(())
        },
    )
    .await;
    // Five intervals: the Job stays gone, the GitSync stays Ready.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(count(&uids), 1, "the Job ran once");
    assert!(jobs.get_opt("report").await.expect("get").is_none());
    let sync = api.get("jobs").await.expect("GitSync");
    let ready = (sync.status.clone().expect("status").conditions.iter())
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "{:?}", sync.status);
    let memory = sync.metadata.annotations.unwrap_or_default();
    assert!(
        memory
            .get(JOBS_ANNOTATION)
            .is_some_and(|m| m.contains(&format!("{}/report", ns.name))),
        "{memory:?}"
    );

    repo.write("jobs/report.yaml", &job("report", "batch:2", Some(2)));
    let revision = repo.commit_and_push("new report image");
    wait_for_revision(&api, "jobs", &revision, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(30),
        "the new image ran once more",
        || async { (count(&uids) == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(count(&uids), 2, "and only once");
}

/// A Helm chart's post-install/post-upgrade hook Job with a TTL: the same run-once rule. Helm
/// itself would run it at every upgrade; here it runs again only when its manifest changes.
const HOOK_CHART: [(&str, &str); 4] = [
    (
        "charts/app/Chart.yaml",
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    ),
    ("charts/app/values.yaml", "tag: \"1\"\n"),
    (
        "charts/app/templates/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-settings}\ndata: {tag: \"{{ .Values.tag }}\"}\n",
    ),
    (
        "charts/app/templates/migrate.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: app-migrate\n  annotations:\n    \
         \"helm.sh/hook\": post-install,post-upgrade\n    \"helm.sh/hook-delete-policy\": before-hook-creation\n\
         spec:\n  ttlSecondsAfterFinished: 2\n  backoffLimit: 0\n  template:\n    spec:\n      \
         restartPolicy: Never\n      containers: [{name: migrate, image: \"app:{{ .Values.tag }}\"}]\n",
    ),
];

#[tokio::test]
async fn a_helm_hook_job_with_a_ttl_runs_once_per_manifest() {
    let ns = TestNamespace::new("run-once-hook").await;
    install_crd(&ns.client).await;
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let uids = record_job_uids(jobs.clone());
    let repo = GitRepo::new();
    for (path, text) in HOOK_CHART {
        repo.write(path, text);
    }
    let revision = repo.commit_and_push("a chart with a migration hook");
    let daemon = GitDaemon::start(repo.root.path());
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": daemon.url(), "interval": "3s", "helm": {"chart": "charts/app"}}),
    )
    .await;
    wait_for_revision(&api, "app", &revision, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "the TTL deletes the finished hook Job",
        || async {
            (count(&uids) == 1 && jobs.get_opt("app-migrate").await.ok()?.is_none()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(count(&uids), 1, "the hook ran once over five intervals");

    repo.write("charts/app/values.yaml", "tag: \"2\"\n");
    let revision = repo.commit_and_push("tag 2: the hook changes");
    wait_for_revision(&api, "app", &revision, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(30),
        "the changed hook ran once more",
        || async { (count(&uids) == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(count(&uids), 2, "and only once");
}
