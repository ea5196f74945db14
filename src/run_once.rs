//! Run-once Jobs. A Job in Git runs once per version of its manifest: after it finished
//! (complete, or failed for good) under this set, it is not created again when it disappears
//! (its `ttlSecondsAfterFinished` ran out, or someone cleaned it up), as long as its manifest is
//! unchanged. A changed manifest runs it again; a finished Job still in the cluster is then
//! deleted and created anew (as `kubesync.dev/recreate` does), since a Job's template cannot
//! change in place.
//!
//! The memory is one annotation on the ApplySet parent ([`JOBS_ANNOTATION`]): per Job still in
//! Git, the hash of the manifest last applied and whether it was seen finished; Jobs that left
//! Git are forgotten, and at most [`MAX_REMEMBERED`] are kept. It survives restarts with the
//! parent. A Job with a TTL that disappears counts as finished even when no sync saw it finish:
//! the TTL controller deletes only finished Jobs.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sha2::{Digest, Sha256};

use crate::health::Health;
use crate::outcome::Action;
use crate::plan::{ObjectKey, PlannedObject};

/// The parent's annotation holding the memory, as JSON.
pub const JOBS_ANNOTATION: &str = "kubesync.dev/jobs";
/// Jobs remembered per set, at most (about 70 bytes each in the annotation).
pub const MAX_REMEMBERED: usize = 1000;
/// Why a Job was not created again, in the change set.
pub const RAN_ONCE: &str =
    "ran once and finished; its manifest is unchanged, so it is not run again";

/// One Job's last run under this set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    /// The first 16 hex digits of the manifest's hash as applied.
    #[serde(rename = "h")]
    pub hash: String,
    /// Seen complete, or failed for good.
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// What a set remembers of its Jobs, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobMemory(pub BTreeMap<String, JobRun>);

pub fn is_job(key: &ObjectKey) -> bool {
    key.group == "batch" && key.kind == "Job"
}

fn memory_key(key: &ObjectKey) -> String {
    format!(
        "{}/{}",
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    )
}

/// The first 16 hex digits of the SHA-256 of the manifest as sent.
fn short_hash(desired: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(desired).unwrap_or_default());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a sync did to one Job, as [`JobMemory::after`] reads it.
pub struct JobOutcome<'a> {
    pub key: &'a ObjectKey,
    pub action: &'a Action,
    pub health: Option<&'a Health>,
}

fn has_ttl(desired: &Value) -> bool {
    desired["spec"]["ttlSecondsAfterFinished"].is_number()
}

impl JobMemory {
    /// The memory of an annotation's value; an unreadable value is an empty memory (the Jobs
    /// then run again, as before this memory existed).
    pub fn parse(annotation: Option<&str>) -> JobMemory {
        annotation
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `planned`, a Job absent from the cluster, already ran as Git has it now.
    pub fn already_ran(&self, planned: &PlannedObject) -> bool {
        if !is_job(&planned.key) {
            return false;
        }
        self.0.get(&memory_key(&planned.key)).is_some_and(|run| {
            run.hash == short_hash(&planned.desired) && (run.finished || has_ttl(&planned.desired))
        })
    }

    /// The manifest hashes of the planned Jobs, taken before the plan is applied.
    pub fn hashes(planned: &[PlannedObject]) -> BTreeMap<ObjectKey, String> {
        (planned.iter())
            .filter(|p| is_job(&p.key))
            .map(|p| (p.key.clone(), short_hash(&p.desired)))
            .collect()
    }

    /// The memory after a sync: the Jobs it applied (finished when their health says so), those
    /// it did not run again, and nothing of Jobs no longer in Git.
    pub fn after(
        &self,
        hashes: &BTreeMap<ObjectKey, String>,
        outcomes: &[JobOutcome<'_>],
        in_git: &BTreeSet<ObjectKey>,
    ) -> JobMemory {
        let mut next: BTreeMap<String, JobRun> = (self.0.iter())
            .filter(|(k, _)| in_git.iter().any(|g| is_job(g) && memory_key(g) == **k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for o in outcomes
            .iter()
            .filter(|o| is_job(o.key) && o.action.applied())
        {
            let Some(hash) = hashes.get(o.key) else {
                continue;
            };
            let key = memory_key(o.key);
            let seen_finished = matches!(o.health, Some(Health::Healthy | Health::Failed(_)));
            let was_finished = next
                .get(&key)
                .is_some_and(|run| run.finished && run.hash == *hash);
            let finished = seen_finished || (was_finished && !o.action.writes());
            next.insert(
                key,
                JobRun {
                    hash: hash.clone(),
                    finished,
                },
            );
        }
        while next.len() > MAX_REMEMBERED {
            next.pop_first();
        }
        JobMemory(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str, image: &str, ttl: bool) -> PlannedObject {
        let mut desired = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        if ttl {
            desired["spec"]["ttlSecondsAfterFinished"] = json!(30);
        }
        PlannedObject {
            key: ObjectKey {
                group: "batch".into(),
                kind: "Job".into(),
                namespace: Some("apps".into()),
                name: name.into(),
            },
            origin: crate::manifests::Origin {
                file: "jobs.yaml".into(),
                document: 0,
                item: None,
            },
            resource: kube::discovery::ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&()),
            namespaced: true,
            stage: crate::plan::Stage::Workloads,
            desired,
            released: Vec::new(),
        }
    }

    /// Leaked: a test's outcomes live as long as the test.
    fn outcome(planned: &PlannedObject, action: Action, health: Health) -> JobOutcome<'static> {
        JobOutcome {
            key: Box::leak(Box::new(planned.key.clone())),
            action: Box::leak(Box::new(action)),
            health: Some(Box::leak(Box::new(health))),
        }
    }

    #[test]
    fn a_finished_job_is_not_run_again_until_its_manifest_changes() {
        let migrate = job("migrate", "app:1", false);
        let in_git = BTreeSet::from([migrate.key.clone()]);
        let running = JobMemory::default().after(
            &JobMemory::hashes(std::slice::from_ref(&migrate)),
            &[outcome(
                &migrate,
                Action::Created,
                Health::Progressing("running".into()),
            )],
            &in_git,
        );
        assert!(!running.already_ran(&migrate), "not seen finished, no TTL");
        let done = running.after(
            &JobMemory::hashes(std::slice::from_ref(&migrate)),
            &[outcome(&migrate, Action::Unchanged, Health::Healthy)],
            &in_git,
        );
        assert!(done.already_ran(&migrate));
        let parsed = JobMemory::parse(Some(&done.to_annotation()));
        assert_eq!(parsed, done, "survives the annotation");
        assert!(
            !done.already_ran(&job("migrate", "app:2", false)),
            "changed manifest"
        );
        assert!(JobMemory::parse(Some("not json")).0.is_empty());
    }

    #[test]
    fn a_job_with_a_ttl_that_disappears_counts_as_finished() {
        let report = job("report", "app:1", true);
        let in_git = BTreeSet::from([report.key.clone()]);
        let memory = JobMemory::default().after(
            &JobMemory::hashes(std::slice::from_ref(&report)),
            &[outcome(
                &report,
                Action::Created,
                Health::Progressing("running".into()),
            )],
            &in_git,
        );
        assert!(memory.already_ran(&report));
    }

    #[test]
    fn jobs_that_left_git_are_forgotten_and_a_rerun_is_not_finished() {
        let a = job("a", "app:1", false);
        let b = job("b", "app:1", false);
        let both = BTreeSet::from([a.key.clone(), b.key.clone()]);
        let memory = JobMemory::default().after(
            &JobMemory::hashes(&[a.clone(), b.clone()]),
            &[
                outcome(&a, Action::Created, Health::Healthy),
                outcome(&b, Action::Created, Health::Healthy),
            ],
            &both,
        );
        assert_eq!(memory.0.len(), 2);
        let only_a = BTreeSet::from([a.key.clone()]);
        let a2 = job("a", "app:2", false);
        let next = memory.after(
            &JobMemory::hashes(std::slice::from_ref(&a2)),
            &[outcome(
                &a2,
                Action::Recreated,
                Health::Progressing("running".into()),
            )],
            &only_a,
        );
        assert_eq!(next.0.len(), 1, "b left Git");
        assert!(!next.0["apps/a"].finished, "the new run has not finished");
    }
}
