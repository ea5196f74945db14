//! Kubernetes Events about a GitSync.
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::warn;

use super::context::{Context, key_of};
use crate::crd::GitSync;

/// One `events.k8s.io/v1` Event per call. (kube-runtime's Recorder folds events of the same
/// reason into one series and keeps the first note, which would hide each sync's revision.)
pub async fn publish(ctx: &Context, sync: &GitSync, type_: EventType, reason: &str, note: String) {
    let namespace = sync.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let event = Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{}.{:x}", sync.name_any(), now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        action: Some("Sync".into()),
        reason: Some(reason.into()),
        note: Some(note.chars().take(1024).collect()),
        type_: Some(match type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some("kubesync.dev/controller".into()),
        reporting_instance: Some(ctx.config.identity.clone()),
        regarding: Some(sync.object_ref(&())),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(e) = events
        .create(&kube::api::PostParams::default(), &event)
        .await
    {
        warn!(sync = %key_of(sync), error = %crate::kube_ext::kube_message(&e), "publishing an event");
    }
}
