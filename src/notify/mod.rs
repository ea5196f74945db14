//! Notifications: what happened to a GitSync, said once in the chat people already read, and the
//! commit's status on its Git forge.
//!
//! - [`payload`]: the request each provider documents (generic JSON with an HMAC signature,
//!   Slack, Discord, Matrix, ntfy, Gotify), built from a [`Notification`] without I/O;
//! - [`forge`]: commit statuses on Gitea/Forgejo, GitHub and GitLab;
//! - [`dedup`]: a failure repeated every interval is one message, then one on recovery;
//! - [`deliver`]: one queue per receiver, rate-limited, retried with backoff, never waited on by
//!   a sync; [`client`]: the outbound HTTP(S) client.
//!
//! Messages are built from what the sync reports, which never holds a Secret's value; the
//! receivers' addresses and tokens (Secrets too) are never logged, only their scheme and host.
pub mod client;
pub mod dedup;
pub mod deliver;
pub mod event;
pub mod forge;
pub mod message;
pub mod payload;

pub use event::{EventKind, Severity};
pub use message::{CommitInfo, Counts, Notification, short_revision, truncated};
