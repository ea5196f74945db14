//! Builders for the controller's unit tests.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::crd::{GitSync, GitSyncStatus, REQUESTED_AT_ANNOTATION};

pub fn sync_with(
    status: Option<GitSyncStatus>,
    generation: i64,
    annotation: Option<&str>,
) -> GitSync {
    let mut s = GitSync::new(
        "web",
        serde_json::from_value(json!({"url": "https://example.org/r.git"})).expect("spec"),
    );
    s.metadata.namespace = Some("apps".into());
    s.metadata.generation = Some(generation);
    if let Some(a) = annotation {
        s.metadata.annotations =
            Some([(REQUESTED_AT_ANNOTATION.to_string(), a.to_string())].into());
    }
    s.status = status;
    s
}

pub fn synced(at: Timestamp, requested: Option<&str>) -> GitSyncStatus {
    GitSyncStatus {
        observed_generation: Some(1),
        last_sync_time: Some(Time(at)),
        last_handled_requested_at: requested.map(String::from),
        ..Default::default()
    }
}
