//! Health of applied objects: rollouts done, Jobs complete, CronJobs' last run, PVCs bound.
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum Health {
    Healthy,
    /// Not there yet; may become healthy by waiting.
    Progressing(String),
    /// Will not become healthy by waiting.
    Failed(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
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
        ("", "PersistentVolumeClaim") => match object["status"]["phase"].as_str() {
            Some("Bound") => Health::Healthy,
            Some("Lost") => Health::Failed("claim lost its volume".into()),
            _ => Health::Progressing("waiting for the claim to be bound".into()),
        },
        ("", "Pod") => match object["status"]["phase"].as_str() {
            Some("Succeeded") => Health::Healthy,
            Some("Failed") => Health::Failed("pod failed".into()),
            Some("Running") if condition_true(object, "Ready") => Health::Healthy,
            _ => Health::Progressing("pod is not ready".into()),
        },
        _ => Health::Healthy,
    }
}

fn deployment(o: &Value) -> Health {
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
    let rolling = o["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && s["updateRevision"].is_string() && s["currentRevision"] != s["updateRevision"] {
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
    if updated < desired || available < desired {
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
        return Health::Healthy;
    }
    Health::Progressing("job is running".into())
}

fn cronjob(o: &Value) -> Health {
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
        assert_eq!(assess("", "ConfigMap", &json!({})), Health::Healthy);
    }
}
