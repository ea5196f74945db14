//! examples/homelab syncs on the local control plane: both Deployments become Available, the
//! database's claim binds through the default StorageClass (no hand-made volume, as on k3s) and
//! its StatefulSet becomes Ready, the migration Job completes, and the backup CronJob, run by
//! hand, binds its claim and Completes.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kubesync::sync::Action;

use crate::support::manifests::sync_dir;
use crate::support::{TestNamespace, eventually, repo_root, run};

fn completed(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

#[tokio::test]
async fn the_homelab_example_syncs_and_its_jobs_complete() {
    let ns = TestNamespace::new("homelab").await;
    let dir = repo_root().join("examples/homelab");
    let report = sync_dir(&ns, &dir, |_| {}).await;
    assert!(
        report.succeeded(),
        "examples/homelab syncs: {:#?}",
        report.errors
    );
    let created = report
        .objects
        .iter()
        .filter(|o| o.result == Action::Created)
        .count();
    assert_eq!(
        created, 14,
        "every object is created: {:#?}",
        report.objects
    );

    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in ["rails", "nginx"] {
        eventually(
            Duration::from_secs(60),
            &format!("deployment {name} Available"),
            || async {
                let d = deployments.get(name).await.ok()?;
                let available = d
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                available.then_some(())
            },
        )
        .await;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ns.client.clone(), &ns.name);
    let bound = |name: &'static str| {
        let claims = claims.clone();
        async move {
            let c = claims.get(name).await.ok()?;
            (c.status?.phase.as_deref() == Some("Bound")).then_some(())
        }
    };
    eventually(
        Duration::from_secs(60),
        "the database's claim to bind through the default StorageClass",
        || bound("data-postgres-0"),
    )
    .await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(
        Duration::from_secs(60),
        "postgres ready on its volume",
        || async {
            let s = statefulsets.get("postgres").await.ok()?.status?;
            (s.ready_replicas == Some(1)).then_some(())
        },
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually(
        Duration::from_secs(60),
        "the migration Job completes",
        || async { completed(&jobs.get("rails-migrate").await.ok()?).then_some(()) },
    )
    .await;

    // The backup CronJob, run by hand as the tutorial says.
    run(Command::new("kubectl").args([
        "create",
        "job",
        "-n",
        &ns.name,
        "--from=cronjob/postgres-backup",
        "backup-now",
    ]));
    eventually(
        Duration::from_secs(60),
        "the backup Job completes",
        || async { completed(&jobs.get("backup-now").await.ok()?).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the backups claim bound to its first consumer",
        || bound("backups"),
    )
    .await;

    // A second sync changes nothing: Complete Jobs are not re-run, nothing is written.
    let again = sync_dir(&ns, &dir, |_| {}).await;
    assert!(again.succeeded(), "{:#?}", again.errors);
    assert_eq!(again.summary.unchanged, 14, "{:#?}", again.objects);
    assert_eq!(again.summary.pruned, 0);
}
