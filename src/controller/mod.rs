//! The in-cluster controller: each GitSync is synced by the same engine as `kubesync sync`, with
//! the GitSync itself as ApplySet parent. Status, Events and metrics report every sync.
//!
//! A reconcile decides first whether a sync is due (spec changed, `kubesync.dev/requestedAt`
//! changed, interval elapsed, or a failure's backoff elapsed); otherwise it only requeues. So the
//! watch events that our own status writes cause never start a sync.
//!
//! - `schedule`: when a sync is due;
//! - `status`: the status each moment of a reconcile writes; `events`: Events;
//! - `credentials`: Git credentials and the ServiceAccount's client;
//! - `remote`: kubeconfigs of other clusters (`spec.kubeConfig`), checked before use;
//! - `shards`: with `--shards`, which GitSyncs this replica syncs (one Lease per shard);
//! - `tenancy`: the lockdown flags (default ServiceAccount, own-namespace references and objects);
//! - `notifications`: chat/webhook notifications and commit statuses after each sync;
//! - `watches`: metadata watches on what each GitSync applied (drift, idle intervals);
//! - `reconcile`: the loop itself; `process`: signals, HTTP listener, Lease.
mod context;
mod credentials;
mod dependencies;
mod engine;
mod events;
mod notifications;
mod notifier;
mod process;
mod reconcile;
mod remote;
mod rollback;
mod schedule;
mod shards;
mod status;
mod tenancy;
#[cfg(test)]
mod testing;
mod watches;

pub use context::{Context, ControllerConfig, ControllerError};
pub use notifier::{DefaultReceiver, NotifyConfig};
pub use process::{ProcessConfig, ProcessError, run_process};
pub use reconcile::run;
pub use shards::Sharding;
pub use tenancy::Tenancy;
