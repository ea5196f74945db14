//! What tells a change made in the cluster from kubesync's own writes, read from an object's
//! metadata alone (what a metadata-only watch delivers): its resourceVersion, its generation, its
//! labels and the hash of Git's content that kubesync writes on it.
//!
//! A sync records the fingerprint of every object it applied (from the apply's response, or the
//! listed object when nothing changed). A later fingerprint of the same object is drift when it
//! is newer and
//! - the object is gone (deleted, or its labels no longer select it);
//! - its labels or its `kubesync.dev/` annotations (Git's hash among them) changed;
//! - its generation changed (the API server bumps it on changes to the spec, not to the status);
//! - it has no generation (ConfigMaps, Secrets, …) and its resourceVersion changed: for these
//!   every write is a write to their content.
//!
//! Status updates of objects with a generation (a Deployment's rollout, a Job's progress) are not
//! drift, nor is a change to an annotation kubesync does not set; the periodic full sync still
//! compares those.
use std::hash::{Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// What a sync does with an object Git did not change but the cluster did: apply Git's state
/// again (`correct`), or leave the object as it is and report which fields differ (`report`).
// No doc comments on the variants: the CRD schema must stay a plain string enum.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    #[default]
    Correct,
    Report,
}

/// How many drifted fields one object's report names; the rest are counted.
const MAX_FIELDS: usize = 10;

/// The fields `desired` sets whose values `live` does not hold, as paths
/// (`spec.replicas`, `spec.template.spec.containers[0].image`, `data.key`); values are never
/// included, so a Secret's report says which keys changed and nothing else. A list whose length
/// changed is named as a whole.
pub fn drifted_fields(desired: &Value, live: &Value) -> Vec<String> {
    let mut fields = Vec::new();
    collect(desired, live, &mut String::new(), &mut fields);
    if fields.len() > MAX_FIELDS {
        let more = fields.len() - MAX_FIELDS;
        fields.truncate(MAX_FIELDS);
        fields.push(format!("and {more} more"));
    }
    fields
}

fn is_empty(value: &Value) -> bool {
    value.is_null()
        || value.as_object().is_some_and(|o| o.is_empty())
        || value.as_array().is_some_and(|a| a.is_empty())
}

fn collect(desired: &Value, live: &Value, path: &mut String, fields: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (key, dv) in d {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match l.get(key) {
                    Some(lv) => collect(dv, lv, path, fields),
                    None if is_empty(dv) => {}
                    None => fields.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                collect(dv, lv, path, fields);
                path.truncate(len);
            }
        }
        (Value::Number(d), Value::Number(l)) if d.as_f64() == l.as_f64() => {}
        (d, l) if d == l => {}
        _ => fields.push(path.clone()),
    }
}

/// Annotations under this prefix are kubesync's: a change to them is drift.
const OWN_ANNOTATIONS: &str = "kubesync.dev/";

/// What a metadata watch shows of one object, reduced to what decides drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// The resourceVersion, when it is a decimal number (it is, from every API server in use:
    /// an etcd revision); ordering events by it drops those older than a recorded write.
    pub resource_version: Option<u64>,
    pub generation: Option<i64>,
    /// Hash of the labels and of kubesync's own annotations.
    pub marks: u64,
}

impl Fingerprint {
    pub fn of(meta: &ObjectMeta) -> Fingerprint {
        let mut hasher = std::hash::DefaultHasher::new();
        // BTreeMap: iteration is ordered, so equal labels hash equally.
        meta.labels.hash(&mut hasher);
        for (name, value) in meta.annotations.iter().flatten() {
            if name.starts_with(OWN_ANNOTATIONS) {
                (name, value).hash(&mut hasher);
            }
        }
        Fingerprint {
            resource_version: meta
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok()),
            // 0 is what objects without a generation report in some API versions.
            generation: meta.generation.filter(|g| *g != 0),
            marks: hasher.finish(),
        }
    }

    /// Whether `seen` (None: the object is gone) shows a change made after this fingerprint
    /// was recorded, by someone else.
    pub fn drifted_to(&self, seen: Option<&Fingerprint>) -> bool {
        let Some(seen) = seen else {
            return true;
        };
        match (self.resource_version, seen.resource_version) {
            (Some(recorded), Some(now)) if now <= recorded => return false,
            (None, None) | (Some(_), None) | (None, Some(_)) if seen == self => return false,
            _ => {}
        }
        if seen.marks != self.marks {
            return true;
        }
        match (self.generation, seen.generation) {
            (Some(recorded), Some(now)) => recorded != now,
            // Without a generation, any newer version is a write to the content.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const HASH_ANNOTATION: &str = "kubesync.dev/applied-hash";

    fn meta(rv: &str, generation: Option<i64>, label: &str) -> ObjectMeta {
        ObjectMeta {
            resource_version: Some(rv.into()),
            generation,
            labels: Some(BTreeMap::from([("app".to_string(), label.to_string())])),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                "abc".to_string(),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn own_writes_and_older_events_are_not_drift() {
        let recorded = Fingerprint::of(&meta("100", Some(3), "web"));
        assert!(!recorded.drifted_to(Some(&recorded)));
        // An event from before the write, delivered late.
        let older = Fingerprint::of(&meta("90", Some(2), "old"));
        assert!(!recorded.drifted_to(Some(&older)));
    }

    #[test]
    fn status_updates_of_objects_with_a_generation_are_not_drift() {
        let recorded = Fingerprint::of(&meta("100", Some(3), "web"));
        let status_only = Fingerprint::of(&meta("105", Some(3), "web"));
        assert!(!recorded.drifted_to(Some(&status_only)));
        let mut annotated = meta("106", Some(3), "web");
        annotated
            .annotations
            .get_or_insert_default()
            .insert("deployment.kubernetes.io/revision".into(), "2".into());
        assert!(!recorded.drifted_to(Some(&Fingerprint::of(&annotated))));
    }

    #[test]
    fn spec_label_hash_and_content_changes_and_deletions_are_drift() {
        let recorded = Fingerprint::of(&meta("100", Some(3), "web"));
        let spec_edit = Fingerprint::of(&meta("101", Some(4), "web"));
        assert!(recorded.drifted_to(Some(&spec_edit)));
        let relabelled = Fingerprint::of(&meta("101", Some(3), "other"));
        assert!(recorded.drifted_to(Some(&relabelled)));
        let mut rehashed = meta("101", Some(3), "web");
        rehashed
            .annotations
            .get_or_insert_default()
            .insert(HASH_ANNOTATION.into(), "edited".into());
        assert!(recorded.drifted_to(Some(&Fingerprint::of(&rehashed))));
        assert!(recorded.drifted_to(None), "deleted");
        // A ConfigMap has no generation: a newer version is a write to its data.
        let configmap = Fingerprint::of(&meta("100", None, "web"));
        let edited = Fingerprint::of(&meta("101", None, "web"));
        assert!(configmap.drifted_to(Some(&edited)));
        assert!(!configmap.drifted_to(Some(&configmap)));
        let zero = Fingerprint::of(&meta("100", Some(0), "web"));
        assert_eq!(zero.generation, None, "generation 0 is no generation");
    }

    #[test]
    fn drifted_fields_name_paths_and_never_values() {
        let desired = serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}},
            "data": {"password": "c2VjcmV0"}, "empty": {}
        });
        let live = serde_json::json!({
            "metadata": {"labels": {"app": "web", "extra": "yes"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "a", "image": "x:2", "imagePullPolicy": "Always"}]}}},
            "data": {"password": "b3RoZXI="}
        });
        let fields = drifted_fields(&desired, &live);
        assert_eq!(
            fields,
            [
                "data.password",
                "spec.replicas",
                "spec.template.spec.containers[0].image"
            ]
        );
        assert!(
            fields
                .iter()
                .all(|f| !f.contains("c2VjcmV0") && !f.contains("b3RoZXI"))
        );
        assert!(drifted_fields(&desired, &desired).is_empty());
        let many: serde_json::Map<String, Value> = (0..15)
            .map(|i| (format!("k{i:02}"), Value::from(i)))
            .collect();
        let fields = drifted_fields(&Value::Object(many), &serde_json::json!({}));
        assert_eq!(fields.len(), MAX_FIELDS + 1);
        assert_eq!(fields[MAX_FIELDS], "and 5 more");
    }

    #[test]
    fn resource_versions_that_are_not_numbers_compare_by_equality() {
        let recorded = Fingerprint::of(&meta("a1", Some(3), "web"));
        assert_eq!(recorded.resource_version, None);
        assert!(!recorded.drifted_to(Some(&recorded)));
        assert!(recorded.drifted_to(Some(&Fingerprint::of(&meta("b2", Some(4), "web")))));
    }
}
