//! Health of applied objects: rollouts done (partitions and OnDelete honoured), Jobs complete,
//! CronJobs' last run, PVCs bound, custom resources by their standard conditions (kstatus).
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum Health {
    Healthy,
    /// Not there yet; may become healthy by waiting.
    Progressing(String),
    /// Paused or suspended on purpose (a paused Deployment, a suspended Job or CronJob): not
    /// failing, and nothing to wait for.
    Suspended(String),
    /// Will not become healthy by waiting.
    Failed(String),
}

impl Health {
    /// Healthy, or deliberately suspended: nothing to alert on or wait for.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy | Health::Suspended(_))
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => write!(f, "healthy"),
            Health::Progressing(r) => write!(f, "progressing: {r}"),
            Health::Suspended(r) => write!(f, "suspended: {r}"),
            Health::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_true(object: &Value, kind: &str) -> bool {
    condition(object, kind).is_some_and(|c| c["status"] == "True")
}

fn generation_observed(object: &Value) -> bool {
    let generation = int(&object["metadata"]["generation"]);
    object["status"]["observedGeneration"]
        .as_i64()
        .is_some_and(|o| o >= generation)
}

/// Health of one object as the server holds it.
pub fn assess(group: &str, kind: &str, object: &Value) -> Health {
    match (group, kind) {
        ("apps", "Deployment") => deployment(object),
        ("apps", "StatefulSet") => statefulset(object),
        ("apps", "DaemonSet") => daemonset(object),
        ("batch", "Job") => job(object),
        ("batch", "CronJob") => cronjob(object),
        ("", "PersistentVolumeClaim") => claim(object),
        ("", "Pod") => match object["status"]["phase"].as_str() {
            Some("Succeeded") => Health::Healthy,
            Some("Failed") => Health::Failed("pod failed".into()),
            Some("Running") if condition_true(object, "Ready") => Health::Healthy,
            _ => Health::Progressing("pod is not ready".into()),
        },
        (group, _) if is_builtin_group(group) => Health::Healthy,
        _ => custom_resource(object),
    }
}

/// Groups served by Kubernetes itself (no `.` in the name, or a `*.k8s.io` group): kinds there
/// without a rule above have no health of their own.
fn is_builtin_group(group: &str) -> bool {
    !group.contains('.') || group.ends_with(".k8s.io")
}

/// Custom resources by the conventions most controllers follow (kstatus): a `Stalled=True`
/// condition is a failure; `Reconciling=True`, `Ready=False` or a generation not yet observed is
/// progress; `Ready=True`, or no conditions at all, is healthy.
fn custom_resource(o: &Value) -> Health {
    let message = |c: &Value| {
        let reason = c["reason"].as_str().unwrap_or_default();
        let text = c["message"].as_str().unwrap_or_default();
        match (reason, text) {
            ("", "") => String::new(),
            (r, "") => format!(": {r}"),
            ("", m) => format!(": {m}"),
            (r, m) => format!(": {r}: {m}"),
        }
    };
    if let Some(c) = condition(o, "Stalled").filter(|c| c["status"] == "True") {
        return Health::Failed(format!("stalled{}", message(c)));
    }
    if let Some(observed) = o["status"]["observedGeneration"].as_i64()
        && observed < int(&o["metadata"]["generation"])
    {
        return Health::Progressing("generation not observed yet".into());
    }
    if let Some(c) = condition(o, "Reconciling").filter(|c| c["status"] == "True") {
        return Health::Progressing(format!("reconciling{}", message(c)));
    }
    match condition(o, "Ready") {
        Some(c) if c["status"] == "False" => {
            Health::Progressing(format!("not ready{}", message(c)))
        }
        Some(c) if c["status"] != "True" => Health::Progressing("readiness unknown".into()),
        _ => Health::Healthy,
    }
}

/// A claim is healthy once bound. A Pending claim that no provisioner has taken up and no node was
/// chosen for is waiting for its first Pod (late binding, as k3s's `local-path` does): nothing to
/// wait for until a workload uses it, so it counts as suspended, not unhealthy.
fn claim(o: &Value) -> Health {
    match o["status"]["phase"].as_str() {
        Some("Bound") => Health::Healthy,
        Some("Lost") => Health::Failed("claim lost its volume".into()),
        _ => {
            let annotations = &o["metadata"]["annotations"];
            let started = [
                "volume.kubernetes.io/storage-provisioner",
                "volume.beta.kubernetes.io/storage-provisioner",
                "volume.kubernetes.io/selected-node",
            ]
            .iter()
            .any(|a| annotations[*a].is_string());
            let has_class = o["spec"]["storageClassName"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            if has_class && !started {
                Health::Suspended("waiting for its first consumer (late binding)".into())
            } else {
                Health::Progressing("waiting for the claim to be bound".into())
            }
        }
    }
}

fn deployment(o: &Value) -> Health {
    if o["spec"]["paused"] == true {
        return Health::Suspended("rollout paused".into());
    }
    if !generation_observed(o) {
        return Health::Progressing("rollout not observed yet".into());
    }
    if let Some(c) = condition(o, "Progressing")
        && c["reason"] == "ProgressDeadlineExceeded"
    {
        return Health::Failed("rollout exceeded its progress deadline".into());
    }
    let wanted = o["spec"]["replicas"].as_i64().unwrap_or(1);
    let s = &o["status"];
    let (updated, total, available) = (
        int(&s["updatedReplicas"]),
        int(&s["replicas"]),
        int(&s["availableReplicas"]),
    );
    if updated < wanted {
        return Health::Progressing(format!("{updated} of {wanted} replicas updated"));
    }
    if total > updated {
        return Health::Progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Health::Progressing(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Health::Healthy
}

fn statefulset(o: &Value) -> Health {
    if !generation_observed(o) {
        return Health::Progressing("rollout not observed yet".into());
    }
    let wanted = o["spec"]["replicas"].as_i64().unwrap_or(1);
    let s = &o["status"];
    let ready = int(&s["readyReplicas"]);
    if ready < wanted {
        return Health::Progressing(format!("{ready} of {wanted} replicas ready"));
    }
    let strategy = &o["spec"]["updateStrategy"];
    if strategy["type"].as_str().unwrap_or("RollingUpdate") != "RollingUpdate" {
        // OnDelete: Pods are replaced only when someone deletes them; nothing to wait for.
        return Health::Healthy;
    }
    // A partition keeps ordinals below it on the old revision on purpose: the rollout is done
    // when every Pod at or above the partition is updated.
    let partition = strategy["rollingUpdate"]["partition"].as_i64().unwrap_or(0);
    if partition > 0 {
        let expected = (wanted - partition).max(0);
        let updated = int(&s["updatedReplicas"]);
        if updated < expected {
            return Health::Progressing(format!(
                "{updated} of {expected} replicas above partition {partition} updated"
            ));
        }
        return Health::Healthy;
    }
    if s["updateRevision"].is_string() && s["currentRevision"] != s["updateRevision"] {
        return Health::Progressing("rolling update in progress".into());
    }
    Health::Healthy
}

fn daemonset(o: &Value) -> Health {
    if !generation_observed(o) {
        return Health::Progressing("rollout not observed yet".into());
    }
    let s = &o["status"];
    let desired = int(&s["desiredNumberScheduled"]);
    let updated = int(&s["updatedNumberScheduled"]);
    let available = int(&s["numberAvailable"]);
    // OnDelete: old Pods stay until someone deletes them; only availability counts.
    let on_delete = o["spec"]["updateStrategy"]["type"] == "OnDelete";
    if (updated < desired && !on_delete) || available < desired {
        return Health::Progressing(format!("{available} of {desired} pods available"));
    }
    Health::Healthy
}

fn job(o: &Value) -> Health {
    if condition_true(o, "Complete") {
        return Health::Healthy;
    }
    if condition_true(o, "Failed") {
        let reason = condition(o, "Failed")
            .and_then(|c| c["reason"].as_str())
            .unwrap_or("failed");
        return Health::Failed(format!("job failed: {reason}"));
    }
    if o["spec"]["suspend"] == true {
        return Health::Suspended("job suspended".into());
    }
    Health::Progressing("job is running".into())
}

fn cronjob(o: &Value) -> Health {
    if o["spec"]["suspend"] == true {
        return Health::Suspended("cronjob suspended".into());
    }
    let s = &o["status"];
    let Some(scheduled) = s["lastScheduleTime"].as_str() else {
        return Health::Healthy; // never run yet
    };
    // RFC 3339 timestamps in UTC compare correctly as strings.
    if s["lastSuccessfulTime"]
        .as_str()
        .is_some_and(|ok| ok >= scheduled)
    {
        return Health::Healthy;
    }
    if s["active"].as_array().is_some_and(|a| !a.is_empty()) {
        return Health::Progressing("a run is in progress".into());
    }
    Health::Failed("the last scheduled run did not succeed".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_rollouts() {
        let done = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(assess("apps", "Deployment", &done), Health::Healthy);
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {"observedGeneration": 2}});
        assert!(matches!(
            assess("apps", "Deployment", &stale),
            Health::Progressing(_)
        ));
        let old_pods = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(
            matches!(assess("apps", "Deployment", &old_pods), Health::Progressing(r) if r.contains("old"))
        );
        let stuck = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}});
        assert!(matches!(
            assess("apps", "Deployment", &stuck),
            Health::Failed(_)
        ));
        let scaled_to_zero = json!({"metadata": {"generation": 1}, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}});
        assert_eq!(
            assess("apps", "Deployment", &scaled_to_zero),
            Health::Healthy
        );
    }

    #[test]
    fn jobs_and_cronjobs() {
        let complete = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess("batch", "Job", &complete), Health::Healthy);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(
            assess("batch", "Job", &failed),
            Health::Failed("job failed: BackoffLimitExceeded".into())
        );
        assert!(matches!(
            assess("batch", "Job", &json!({})),
            Health::Progressing(_)
        ));
        assert_eq!(
            assess("batch", "CronJob", &json!({"status": {}})),
            Health::Healthy
        );
        let ok = json!({"status": {"lastScheduleTime": "2026-01-01T02:00:00Z", "lastSuccessfulTime": "2026-01-01T02:00:07Z"}});
        assert_eq!(assess("batch", "CronJob", &ok), Health::Healthy);
        let running = json!({"status": {"lastScheduleTime": "2026-01-02T02:00:00Z", "lastSuccessfulTime": "2026-01-01T02:00:07Z", "active": [{"name": "j"}]}});
        assert!(matches!(
            assess("batch", "CronJob", &running),
            Health::Progressing(_)
        ));
        let bad = json!({"status": {"lastScheduleTime": "2026-01-02T02:00:00Z", "lastSuccessfulTime": "2026-01-01T02:00:07Z"}});
        assert!(matches!(
            assess("batch", "CronJob", &bad),
            Health::Failed(_)
        ));
    }

    #[test]
    fn partitions_pauses_and_on_delete_settle() {
        let partitioned = json!({"metadata": {"generation": 2},
            "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}},
            "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 2,
                "currentRevision": "r1", "updateRevision": "r2"}});
        assert_eq!(assess("apps", "StatefulSet", &partitioned), Health::Healthy);
        let mut halfway = partitioned.clone();
        halfway["status"]["updatedReplicas"] = json!(1);
        assert!(matches!(
            assess("apps", "StatefulSet", &halfway),
            Health::Progressing(_)
        ));
        let paused = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2, "paused": true},
            "status": {"observedGeneration": 2}});
        let health = assess("apps", "Deployment", &paused);
        assert!(matches!(health, Health::Suspended(_)), "{health:?}");
        assert!(health.is_healthy(), "paused is not failing");
        let on_delete = json!({"metadata": {"generation": 2}, "spec": {"updateStrategy": {"type": "OnDelete"}},
            "status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 1, "numberAvailable": 3}});
        assert_eq!(assess("apps", "DaemonSet", &on_delete), Health::Healthy);
        let mut rolling = on_delete.clone();
        rolling["spec"]["updateStrategy"]["type"] = json!("RollingUpdate");
        assert!(matches!(
            assess("apps", "DaemonSet", &rolling),
            Health::Progressing(_)
        ));
    }

    #[test]
    fn custom_resources_by_their_conditions() {
        let cr =
            |status: serde_json::Value| json!({"metadata": {"generation": 2}, "status": status});
        assert_eq!(
            assess("example.io", "Widget", &json!({"spec": {}})),
            Health::Healthy,
            "no conditions: nothing to judge"
        );
        assert_eq!(
            assess(
                "example.io",
                "Widget",
                &cr(
                    json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]})
                )
            ),
            Health::Healthy
        );
        assert!(matches!(
            assess("example.io", "Widget", &cr(json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Waiting"}]}))),
            Health::Progressing(r) if r.contains("Waiting")
        ));
        assert!(matches!(
            assess(
                "example.io",
                "Widget",
                &cr(
                    json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]})
                )
            ),
            Health::Progressing(_)
        ));
        assert!(matches!(
            assess("example.io", "Widget", &cr(json!({"conditions": [{"type": "Stalled", "status": "True", "message": "bad spec"}]}))),
            Health::Failed(r) if r.contains("bad spec")
        ));
        assert_eq!(
            assess(
                "networking.k8s.io",
                "Ingress",
                &cr(json!({"conditions": [{"type": "Ready", "status": "False"}]}))
            ),
            Health::Healthy,
            "built-in kinds without a rule are healthy"
        );
    }

    #[test]
    fn claims_and_others() {
        assert_eq!(
            assess(
                "",
                "PersistentVolumeClaim",
                &json!({"status": {"phase": "Bound"}})
            ),
            Health::Healthy
        );
        assert!(matches!(
            assess(
                "",
                "PersistentVolumeClaim",
                &json!({"status": {"phase": "Pending"}})
            ),
            Health::Progressing(_)
        ));
        let late =
            json!({"spec": {"storageClassName": "local-path"}, "status": {"phase": "Pending"}});
        assert!(matches!(
            assess("", "PersistentVolumeClaim", &late),
            Health::Suspended(_)
        ));
        let provisioning = json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}},
            "spec": {"storageClassName": "local-path"}, "status": {"phase": "Pending"}});
        assert!(matches!(
            assess("", "PersistentVolumeClaim", &provisioning),
            Health::Progressing(_)
        ));
        assert_eq!(assess("", "ConfigMap", &json!({})), Health::Healthy);
    }
}
