//! The ApplySet for the length of one sync: opened before the first write (parent read and
//! verified, widened to everything the sync can touch, inventory listed) and narrowed after a
//! complete prune to what the set still holds.
use std::collections::BTreeSet;

use kube::Client;

use super::error::ApplySetError;
use super::footprint::Footprint;
use super::inventory::{Inventory, LiveObject, list_inventory};
use super::parent::{Parent, read_parent, write_parent};
use crate::plan::{Discovery, ObjectKey};
use crate::run_once::JobMemory;

pub struct OpenSet {
    pub parent: Parent,
    /// Whether the parent existed when the set was opened.
    pub existed: bool,
    /// What the parent records (after [`OpenSet::widen`]: old and new together).
    recorded: Footprint,
    /// What this sync's plan can touch.
    desired: Footprint,
    /// The set's live objects, once listed.
    pub inventory: Inventory,
    /// The Jobs that ran under this set, as the parent records them.
    pub jobs: JobMemory,
}

impl OpenSet {
    /// Reads and verifies the parent. Only a Secret parent (the CLI's) may be missing: the sync
    /// creates it. A GitSync parent that is gone fails the sync.
    pub async fn read(
        client: &Client,
        parent: &Parent,
        desired: Footprint,
    ) -> Result<OpenSet, ApplySetError> {
        let state = read_parent(client, parent).await?;
        if !state.exists && !parent.is_secret() {
            return Err(ApplySetError::MissingParent {
                kind: parent.resource.kind.clone(),
                namespace: parent.namespace.clone(),
                name: parent.name.clone(),
            });
        }
        Ok(OpenSet {
            parent: parent.clone(),
            existed: state.exists,
            recorded: state.footprint,
            desired,
            inventory: Inventory::default(),
            jobs: state.jobs,
        })
    }

    /// Widens the parent to the union of what it records and what this sync can touch, before
    /// anything is applied, so an interrupted sync never leaves an object the next one cannot
    /// find. `write: false` (dry runs) only widens what [`OpenSet::list`] reads.
    pub async fn widen(
        &mut self,
        client: &Client,
        field_manager: &str,
        write: bool,
    ) -> Result<(), ApplySetError> {
        let widened = self.recorded.union(&self.desired);
        if write && (!self.existed || widened != self.recorded) {
            write_parent(client, &self.parent, &widened, field_manager).await?;
        }
        self.recorded = widened;
        Ok(())
    }

    /// Lists the set's live objects in everything the parent records.
    pub async fn list(&mut self, client: &Client, discovery: &Discovery, concurrency: usize) {
        self.inventory = list_inventory(
            client,
            discovery,
            &self.parent.id(),
            &self.recorded,
            &self.parent.namespace,
            concurrency,
        )
        .await;
    }

    /// Live objects of the set that this sync does not want: what a prune would delete.
    pub fn leftovers(&self, wanted: &BTreeSet<ObjectKey>) -> Vec<(ObjectKey, LiveObject)> {
        self.inventory
            .objects
            .iter()
            .filter(|(k, _)| !wanted.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// After a complete prune: narrows the parent to what the set now holds, the wanted objects
    /// plus those a prune left in place. Re-reads the parent first and writes only on a change.
    pub async fn narrow<'a>(
        &self,
        client: &Client,
        held: impl IntoIterator<Item = &'a ObjectKey>,
        field_manager: &str,
    ) -> Result<(), ApplySetError> {
        let footprint = self.desired.with_keys(held);
        match read_parent(client, &self.parent).await {
            Ok(state) if state.footprint == footprint => Ok(()),
            _ => write_parent(client, &self.parent, &footprint, field_manager).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GroupKind;

    fn key(kind: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: namespace.map(String::from),
            name: name.into(),
        }
    }

    #[test]
    fn a_footprint_is_the_union_of_group_kinds_and_namespaces_of_its_keys() {
        let mut desired = Footprint::default();
        desired.add(
            GroupKind {
                group: "apps".into(),
                kind: "Deployment".into(),
            },
            Some("web"),
        );
        let held = [
            key("ConfigMap", Some("web"), "a"),
            key("ConfigMap", Some("jobs"), "b"),
            key("Namespace", None, "web"),
        ];
        let footprint = desired.with_keys(&held);
        let kinds: Vec<String> = footprint
            .group_kinds
            .iter()
            .map(GroupKind::applyset_form)
            .collect();
        assert_eq!(kinds, ["ConfigMap", "Namespace", "Deployment.apps"]);
        assert_eq!(
            footprint.namespaces.iter().collect::<Vec<_>>(),
            ["jobs", "web"]
        );
        assert_eq!(desired.union(&footprint), footprint);
        assert_eq!(desired.with_keys(&[]), desired);
    }
}
