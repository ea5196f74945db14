//! What to fetch, with which credentials, and what a fetch gives.
use std::path::PathBuf;
use std::time::Duration;

/// What to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    Commit(String),
}

impl Default for GitRef {
    fn default() -> Self {
        GitRef::Branch("main".into())
    }
}

impl GitRef {
    /// `main`, `refs/heads/x`, `refs/tags/v1`, or a 40-hex commit.
    pub fn parse(s: &str) -> GitRef {
        if let Some(b) = s.strip_prefix("refs/heads/") {
            GitRef::Branch(b.into())
        } else if let Some(t) = s.strip_prefix("refs/tags/") {
            GitRef::Tag(t.into())
        } else if s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            GitRef::Commit(s.to_ascii_lowercase())
        } else {
            GitRef::Branch(s.into())
        }
    }
}

/// Credentials. Values are never logged or put in errors.
#[derive(Clone, Default)]
pub struct Auth {
    pub ssh_key: Option<PathBuf>,
    pub ssh_passphrase: Option<String>,
    pub known_hosts: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// `https://`, `ssh://`, `git@host:path`, `git://`, `file://`, or a local directory.
    pub url: String,
    pub reference: GitRef,
    pub auth: Auth,
    pub timeout: Duration,
}

/// A checked-out revision on disk.
#[derive(Clone, Debug)]
pub struct Checkout {
    pub dir: PathBuf,
    /// Commit id, or `sha256:<hex>` of the content of a plain directory.
    pub revision: String,
    /// Committer time (seconds since the epoch) of a Git commit.
    pub commit_time: Option<i64>,
    /// Whether objects were fetched (false when the ref had not moved).
    pub fetched: bool,
    /// The commit's subject and author (Git sources).
    pub commit: Option<CommitInfo>,
}

/// The commit a sync applied: its subject line and its author's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitInfo {
    pub subject: String,
    pub author: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: {message}")]
    Git { url: String, message: String },
    #[error("{url}: ref {reference} not found on the remote")]
    RefNotFound { url: String, reference: String },
    #[error("{url}: timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: SSH host key check failed: {message}")]
    HostKey { url: String, message: String },
    #[error("cache directory {dir}: {message}")]
    Cache { dir: String, message: String },
    #[error("{path}: {message}")]
    Local { path: String, message: String },
}

/// A URL with any `user:password@` removed, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        let user = userinfo.split(':').next().unwrap_or_default();
        return format!("{scheme}://{user}@{host}");
    }
    url.to_string()
}
