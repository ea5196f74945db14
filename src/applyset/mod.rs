//! ApplySet tracking (KEP-3659): the parent object, its annotations, and the live inventory of
//! objects labelled `applyset.kubernetes.io/part-of=<id>`.
//!
//! The parent records which group-kinds and namespaces the set spans. It is widened to the union of
//! old and new *before* anything is applied, so an interrupted sync never leaves an object the next
//! sync cannot find; it is narrowed only after a complete prune.
mod error;
mod footprint;
mod inventory;
mod parent;
mod set;

pub use error::ApplySetError;
pub use footprint::Footprint;
pub use inventory::{Inventory, LiveObject, list_inventory};
pub use parent::{
    GROUP_KINDS_ANNOTATION, ID_LABEL, NAMESPACES_ANNOTATION, Parent, ParentState,
    TOOLING_ANNOTATION, applyset_id, read_parent, write_jobs, write_parent,
};
pub use set::OpenSet;
