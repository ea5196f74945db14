//! The live inventory of an ApplySet: every object labelled `applyset.kubernetes.io/part-of=<id>`
//! in the group-kinds and namespaces its parent records.
use std::collections::BTreeMap;

use futures::StreamExt;
use kube::api::{DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};

use super::error::ApplySetError;
use super::footprint::Footprint;
use crate::kube_ext::dynamic_api;
use crate::plan::{Discovery, ObjectKey, PART_OF_LABEL, ResourceInfo};

/// One labelled object found in the cluster.
#[derive(Clone, Debug)]
pub struct LiveObject {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub object: DynamicObject,
}

/// Live objects of the set, by identity. `complete` is false when some group-kind could not be
/// listed; then nothing may be pruned.
#[derive(Debug, Default)]
pub struct Inventory {
    pub objects: BTreeMap<ObjectKey, LiveObject>,
    pub errors: Vec<ApplySetError>,
}

impl Inventory {
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
    }

    /// Adds the result of one list request.
    fn record(
        &mut self,
        info: &ResourceInfo,
        namespace: Option<String>,
        listed: Result<Vec<DynamicObject>, kube::Error>,
    ) {
        let items = match listed {
            Ok(items) => items,
            // A namespace that does not exist yet holds no objects.
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(source) => {
                self.errors.push(ApplySetError::List {
                    resource: info.api_resource.plural.clone(),
                    scope: namespace
                        .map(|n| format!("namespace {n}"))
                        .unwrap_or_else(|| "the cluster".into()),
                    source,
                });
                return;
            }
        };
        for mut object in items {
            // List items omit apiVersion/kind; restore them for the object we keep.
            object.types = Some(kube::api::TypeMeta {
                api_version: info.api_resource.api_version.clone(),
                kind: info.api_resource.kind.clone(),
            });
            let key = ObjectKey {
                group: info.api_resource.group.clone(),
                kind: info.api_resource.kind.clone(),
                namespace: object.namespace(),
                name: object.name_any(),
            };
            let live = LiveObject {
                resource: info.api_resource.clone(),
                namespaced: info.namespaced,
                object,
            };
            self.objects.insert(key, live);
        }
    }
}

/// Drops what no stage reads from a listed object: the field sets of managedFields entries (only
/// managers and operations are consulted; adoption works on the apply response). They are often
/// the largest part of an object.
fn trim(mut object: DynamicObject) -> DynamicObject {
    for entry in object.metadata.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
    object
}

/// One list request per listable group-kind of the footprint, in each namespace of the footprint
/// (plus the parent's) for namespaced kinds. A group-kind whose API group discovery could not
/// read is an error: its objects cannot be seen.
fn list_requests(
    discovery: &Discovery,
    footprint: &Footprint,
    parent_namespace: &str,
    errors: &mut Vec<ApplySetError>,
) -> Vec<(ResourceInfo, Option<String>)> {
    let mut namespaces = footprint.namespaces.clone();
    namespaces.insert(parent_namespace.to_string());
    let mut requests = Vec::new();
    for gk in &footprint.group_kinds {
        let Some(info) = discovery.preferred(gk) else {
            let group_stale = discovery
                .stale
                .iter()
                .any(|gv| crate::manifests::group_of(gv) == gk.group && gv.contains('/'));
            if group_stale {
                errors.push(ApplySetError::StaleGroup {
                    group_kind: gk.applyset_form(),
                });
            }
            continue;
        };
        if !info.supports("list") {
            continue;
        }
        if info.namespaced {
            requests.extend(namespaces.iter().map(|ns| (info.clone(), Some(ns.clone()))));
        } else {
            requests.push((info.clone(), None));
        }
    }
    requests
}

/// Every object the selector matches, in pages of 500 (each trimmed before the next), so the
/// largest response stays small.
async fn list_labelled(
    api: &Api<DynamicObject>,
    selector: &str,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let mut items = Vec::new();
    let mut params = ListParams::default().labels(selector).limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        items.extend(page.items.into_iter().map(trim));
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Lists every group-kind of the footprint in each namespace of the footprint (plus the parent's)
/// by the part-of label. Kinds the cluster no longer serves (CRD deleted) have no objects left.
pub async fn list_inventory(
    client: &Client,
    discovery: &Discovery,
    id: &str,
    footprint: &Footprint,
    parent_namespace: &str,
    concurrency: usize,
) -> Inventory {
    let mut inventory = Inventory::default();
    let requests = list_requests(
        discovery,
        footprint,
        parent_namespace,
        &mut inventory.errors,
    );
    let selector = format!("{PART_OF_LABEL}={id}");
    let results = futures::stream::iter(requests.into_iter().map(|(info, ns)| {
        let api = dynamic_api(client, ns.as_deref(), &info.api_resource);
        let selector = selector.clone();
        async move {
            let listed = list_labelled(&api, &selector).await;
            (info, ns, listed)
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    for (info, ns, listed) in results {
        inventory.record(&info, ns, listed);
    }
    inventory
}
