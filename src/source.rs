//! Source stage: fetch one ref of a Git repository (or read a plain directory) into the cache.
//!
//! Git: a bare repository per URL in the cache directory. Each sync lists the remote's refs first;
//! when the wanted commit is already present nothing is fetched. Otherwise the ref is fetched
//! shallowly with a forced refspec (a force-push is followed, never merged) and the commit's tree is
//! written to `trees/<commit>`. SSH host keys are always checked against a known_hosts file: unknown
//! and changed keys are refused. All git2 work runs on a blocking thread with a deadline.
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

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

impl SourceError {
    /// Short category for metrics and status.
    pub fn category(&self) -> &'static str {
        match self {
            SourceError::Git { .. } => "git",
            SourceError::RefNotFound { .. } => "ref_not_found",
            SourceError::Timeout { .. } => "timeout",
            SourceError::HostKey { .. } => "host_key",
            SourceError::Cache { .. } => "cache",
            SourceError::Local { .. } => "local",
        }
    }
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

fn is_remote_url(url: &str) -> bool {
    url.contains("://") || (url.contains('@') && url.contains(':') && !Path::new(url).exists())
}

/// Fetches (or reads) the source into `cache_dir`.
pub async fn fetch(spec: &SourceSpec, cache_dir: &Path) -> Result<Checkout, SourceError> {
    if !is_remote_url(&spec.url) {
        let dir = PathBuf::from(&spec.url);
        return tokio::task::spawn_blocking(move || local_checkout(&dir))
            .await
            .map_err(|e| SourceError::Local {
                path: spec.url.clone(),
                message: e.to_string(),
            })?;
    }
    let spec2 = spec.clone();
    let cache = cache_dir.to_path_buf();
    let deadline = Instant::now() + spec.timeout;
    let task = tokio::task::spawn_blocking(move || git_checkout(&spec2, &cache, deadline));
    match tokio::time::timeout(spec.timeout + Duration::from_secs(2), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(SourceError::Git {
            url: redact_url(&spec.url),
            message: join.to_string(),
        }),
        Err(_) => Err(SourceError::Timeout {
            url: redact_url(&spec.url),
            timeout: spec.timeout,
        }),
    }
}

fn local_checkout(dir: &Path) -> Result<Checkout, SourceError> {
    let err = |message: String| SourceError::Local {
        path: dir.display().to_string(),
        message,
    };
    if !dir.is_dir() {
        return Err(err("is not a directory (and not a Git URL)".into()));
    }
    let mut hasher = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| err(format!("reading {}: {}", d.display(), e.kind())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let ft = entry.file_type().map_err(|e| err(e.kind().to_string()))?;
            if ft.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for f in &files {
        let rel = f.strip_prefix(dir).unwrap_or(f);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        if let Ok(bytes) = std::fs::read(f) {
            hasher.update(&bytes);
        }
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Checkout {
        dir: dir.to_path_buf(),
        revision: format!("sha256:{hex}"),
        commit_time: None,
        fetched: false,
    })
}

static GIT_INIT: Once = Once::new();

fn init_git(timeout: Duration) {
    GIT_INIT.call_once(|| {
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1000);
        // SAFETY: called once, before any other git2 operation of this process.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms.min(30_000));
            let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
            let _ = git2::opts::set_verify_owner_validation(false);
        }
        // CA certificates for https: $SSL_CERT_FILE when set (OpenSSL's convention, for a private
        // CA), else the system's bundle (the vendored OpenSSL has no default path of its own).
        let from_env = std::env::var("SSL_CERT_FILE")
            .ok()
            .filter(|f| !f.is_empty());
        if let Some(file) = from_env.as_deref().filter(|f| !Path::new(f).is_file()) {
            tracing::warn!(
                file,
                "SSL_CERT_FILE names no file; using the system's CA certificates"
            );
        }
        let candidates = from_env.into_iter().chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(String::from),
        );
        for file in candidates {
            if Path::new(&file).is_file() {
                // SAFETY: as above, once before other git2 use.
                let _ = unsafe { git2::opts::set_ssl_cert_file(file) };
                break;
            }
        }
    });
}

fn cache_key(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

fn git_checkout(
    spec: &SourceSpec,
    cache_dir: &Path,
    deadline: Instant,
) -> Result<Checkout, SourceError> {
    init_git(spec.timeout);
    let url = redact_url(&spec.url);
    let git_err = |e: git2::Error| SourceError::Git {
        url: url.clone(),
        message: e.message().to_string(),
    };
    let base = cache_dir.join(cache_key(&spec.url));
    let repo_dir = base.join("repo.git");
    let cache_err = |e: std::io::Error| SourceError::Cache {
        dir: base.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&base).map_err(cache_err)?;
    let repo = match git2::Repository::open_bare(&repo_dir) {
        Ok(r) => r,
        Err(_) => {
            let _ = std::fs::remove_dir_all(&repo_dir);
            git2::Repository::init_bare(&repo_dir).map_err(|e| SourceError::Cache {
                dir: repo_dir.display().to_string(),
                message: e.message().to_string(),
            })?
        }
    };
    let host_check = HostCheck::new(&spec.url, spec.auth.known_hosts.as_deref());
    let host_failure = std::cell::RefCell::new(None::<String>);
    let mut remote = repo.remote_anonymous(&spec.url).map_err(git_err)?;

    // 1. Which commit does the ref point at now?
    let wanted_ref = match &spec.reference {
        GitRef::Branch(b) => Some(format!("refs/heads/{b}")),
        GitRef::Tag(t) => Some(format!("refs/tags/{t}")),
        GitRef::Commit(_) => None,
    };
    let target: git2::Oid = {
        let callbacks = callbacks(&spec.auth, &host_check, &host_failure, deadline);
        let connection = remote.connect_auth(git2::Direction::Fetch, Some(callbacks), None);
        let connection = match connection {
            Ok(c) => c,
            Err(e) => return Err(map_failure(e, &host_failure, &url, deadline, spec.timeout)),
        };
        match (&spec.reference, &wanted_ref) {
            (GitRef::Commit(sha), _) => git2::Oid::from_str(sha).map_err(git_err)?,
            (_, Some(name)) => {
                let heads = connection.list().map_err(git_err)?;
                let peeled = format!("{name}^{{}}");
                let found = heads
                    .iter()
                    .find(|h| h.name() == peeled)
                    .or_else(|| heads.iter().find(|h| h.name() == name));
                match found {
                    Some(h) => h.oid(),
                    None => {
                        return Err(SourceError::RefNotFound {
                            url: url.clone(),
                            reference: name.clone(),
                        });
                    }
                }
            }
            _ => unreachable_ref(&url)?,
        }
    };

    // 2. Fetch only when the commit is not here yet.
    let mut fetched = false;
    if repo.find_commit(target).is_err() {
        let refspec = match &wanted_ref {
            Some(name) => format!("+{name}:refs/kubesync/target"),
            None => format!("+{target}:refs/kubesync/target"),
        };
        let mut options = git2::FetchOptions::new();
        options.remote_callbacks(callbacks(&spec.auth, &host_check, &host_failure, deadline));
        // libgit2's local transport cannot fetch shallowly; everything else can.
        if !spec.url.starts_with("file://") {
            options.depth(1);
        }
        options.download_tags(git2::AutotagOption::None);
        if let Err(e) = remote.fetch(&[refspec.as_str()], Some(&mut options), None) {
            return Err(map_failure(e, &host_failure, &url, deadline, spec.timeout));
        }
        fetched = true;
    }
    let commit = repo.find_commit(target).map_err(|e| SourceError::Git {
        url: url.clone(),
        message: format!("commit {target} not available after fetch: {}", e.message()),
    })?;
    let _ = repo.reference("refs/kubesync/target", target, true, "kubesync sync");

    // 3. Write the commit's tree (once per commit) and drop older trees.
    let trees = base.join("trees");
    let dir = trees.join(target.to_string());
    if !dir.is_dir() {
        let tmp = trees.join(format!(".tmp-{target}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(cache_err)?;
        write_tree(&repo, &commit.tree().map_err(git_err)?, &tmp).map_err(|message| {
            SourceError::Git {
                url: url.clone(),
                message,
            }
        })?;
        std::fs::rename(&tmp, &dir).map_err(cache_err)?;
    }
    if let Ok(entries) = std::fs::read_dir(&trees) {
        for entry in entries.flatten() {
            if entry.path() != dir {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(Checkout {
        dir,
        revision: target.to_string(),
        commit_time: Some(commit.time().seconds()),
        fetched,
    })
}

fn unreachable_ref(url: &str) -> Result<git2::Oid, SourceError> {
    Err(SourceError::Git {
        url: url.into(),
        message: "no ref to resolve".into(),
    })
}

fn map_failure(
    e: git2::Error,
    host_failure: &std::cell::RefCell<Option<String>>,
    url: &str,
    deadline: Instant,
    timeout: Duration,
) -> SourceError {
    if let Some(message) = host_failure.borrow_mut().take() {
        return SourceError::HostKey {
            url: url.into(),
            message,
        };
    }
    if Instant::now() >= deadline {
        return SourceError::Timeout {
            url: url.into(),
            timeout,
        };
    }
    SourceError::Git {
        url: url.into(),
        message: e.message().to_string(),
    }
}

fn callbacks<'a>(
    auth: &'a Auth,
    host_check: &'a HostCheck,
    host_failure: &'a std::cell::RefCell<Option<String>>,
    deadline: Instant,
) -> git2::RemoteCallbacks<'a> {
    let mut cb = git2::RemoteCallbacks::new();
    let mut attempts = 0;
    cb.credentials(move |_url, username_from_url, allowed| {
        attempts += 1;
        if attempts > 3 {
            return Err(git2::Error::from_str(
                "authentication failed (credentials rejected)",
            ));
        }
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let user = username_from_url
                .or(auth.username.as_deref())
                .unwrap_or("git");
            return match &auth.ssh_key {
                Some(key) => git2::Cred::ssh_key(user, None, key, auth.ssh_passphrase.as_deref()),
                None => Err(git2::Error::from_str(
                    "the server asks for an SSH key and none was given",
                )),
            };
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            return match (&auth.username, &auth.password) {
                (Some(u), Some(p)) => git2::Cred::userpass_plaintext(u, p),
                (None, Some(p)) => {
                    git2::Cred::userpass_plaintext(username_from_url.unwrap_or("git"), p)
                }
                _ => Err(git2::Error::from_str(
                    "the server asks for a username and password and none were given",
                )),
            };
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(username_from_url.unwrap_or("git"));
        }
        Err(git2::Error::from_str("no supported authentication method"))
    });
    cb.certificate_check(move |cert, hostname| {
        if let Some(hostkey) = cert.as_hostkey() {
            let Some(key) = hostkey.hostkey() else {
                *host_failure.borrow_mut() =
                    Some("the server's raw host key is unavailable".into());
                return Err(git2::Error::from_str("host key unavailable"));
            };
            return match host_check.verify(hostname, key) {
                Ok(()) => Ok(git2::CertificateCheckStatus::CertificateOk),
                Err(message) => {
                    *host_failure.borrow_mut() = Some(message.clone());
                    Err(git2::Error::from_str(&message))
                }
            };
        }
        // TLS: let libgit2 verify the chain against the system's CA certificates.
        Ok(git2::CertificateCheckStatus::CertificatePassthrough)
    });
    cb.transfer_progress(move |_| Instant::now() < deadline);
    cb.sideband_progress(move |_| Instant::now() < deadline);
    cb
}

/// Writes a tree's blobs and symlinks under `dir`. Names are validated: a tree can never write
/// outside `dir`.
fn write_tree(repo: &git2::Repository, tree: &git2::Tree<'_>, dir: &Path) -> Result<(), String> {
    for entry in tree.iter() {
        let name = entry
            .name()
            .map_err(|_| "a tree entry has a non-UTF-8 name".to_string())?;
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(format!("refusing tree entry name {name:?}"));
        }
        let path = dir.join(name);
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let sub = repo
                    .find_tree(entry.id())
                    .map_err(|e| e.message().to_string())?;
                std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
                write_tree(repo, &sub, &path)?;
            }
            Some(git2::ObjectType::Blob) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|e| e.message().to_string())?;
                if entry.filemode() == 0o120000 {
                    let target = std::str::from_utf8(blob.content())
                        .map_err(|_| format!("symlink {name} has a non-UTF-8 target"))?;
                    std::os::unix::fs::symlink(target, &path).map_err(|e| e.to_string())?;
                } else {
                    std::fs::write(&path, blob.content()).map_err(|e| e.to_string())?;
                }
            }
            // Submodules (commits) are not followed.
            _ => {}
        }
    }
    Ok(())
}

/// known_hosts verification for one remote.
pub struct HostCheck {
    entries: Vec<KnownHost>,
    port: Option<u16>,
    missing_file: Option<String>,
}

struct KnownHost {
    patterns: String,
    key: Vec<u8>,
    revoked: bool,
}

impl HostCheck {
    pub fn new(url: &str, known_hosts: Option<&Path>) -> HostCheck {
        let port = ssh_port(url);
        match known_hosts {
            None => HostCheck {
                entries: Vec::new(),
                port,
                missing_file: Some(
                    "no known_hosts file was given (SSH host keys are always verified)".into(),
                ),
            },
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => HostCheck {
                    entries: parse_known_hosts(&text),
                    port,
                    missing_file: None,
                },
                Err(e) => HostCheck {
                    entries: Vec::new(),
                    port,
                    missing_file: Some(format!(
                        "cannot read known_hosts {}: {}",
                        path.display(),
                        e.kind()
                    )),
                },
            },
        }
    }

    pub fn from_text(text: &str, port: Option<u16>) -> HostCheck {
        HostCheck {
            entries: parse_known_hosts(text),
            port,
            missing_file: None,
        }
    }

    /// Ok when known_hosts lists this exact key for the host; an error that says why otherwise.
    pub fn verify(&self, hostname: &str, key: &[u8]) -> Result<(), String> {
        if let Some(m) = &self.missing_file {
            return Err(m.clone());
        }
        let names: Vec<String> = match self.port {
            Some(p) if p != 22 => vec![format!("[{hostname}]:{p}")],
            _ => vec![hostname.to_string()],
        };
        let matching: Vec<&KnownHost> = self
            .entries
            .iter()
            .filter(|e| names.iter().any(|n| host_matches(&e.patterns, n)))
            .collect();
        if matching.iter().any(|e| e.revoked && e.key == key) {
            return Err(format!(
                "the host key of {} is marked @revoked in known_hosts",
                names[0]
            ));
        }
        if matching.iter().any(|e| !e.revoked && e.key == key) {
            return Ok(());
        }
        if matching.is_empty() {
            Err(format!(
                "host {} is not in known_hosts (unknown host key refused)",
                names[0]
            ))
        } else {
            Err(format!(
                "the host key of {} does not match known_hosts (changed host key refused)",
                names[0]
            ))
        }
    }
}

fn ssh_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("ssh://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.starts_with('[') {
        return host_port
            .rsplit_once("]:")
            .and_then(|(_, p)| p.parse().ok());
    }
    host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn parse_known_hosts(text: &str) -> Vec<KnownHost> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if first.starts_with('@') {
            if first == "@revoked" {
                revoked = true;
            } else {
                continue; // @cert-authority: certificates are not supported
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(_keytype), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(blob) else {
            continue;
        };
        out.push(KnownHost {
            patterns: first.to_string(),
            key,
            revoked,
        });
    }
    out
}

fn host_matches(patterns: &str, host: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
            return false;
        };
        return hmac_sha1(&salt, host.as_bytes()) == hash.as_slice();
    }
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated, host) {
                return false;
            }
        } else if wildcard(pattern, host) {
            matched = true;
        }
    }
    matched
}

fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// HMAC-SHA1 as OpenSSH uses for hashed known_hosts entries.
fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use sha1::Sha1;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha1::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBbxS0pMvGv8FkBfBvEcmGvvqRu9VQmrcaSPcqGW3xLA";

    fn key(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }

    #[test]
    fn known_and_changed_and_unknown_hosts() {
        let check = HostCheck::from_text(
            &format!("git.example.org,10.1.2.3 ssh-ed25519 {KEY_A}\n"),
            None,
        );
        assert_eq!(check.verify("git.example.org", &key(KEY_A)), Ok(()));
        assert!(
            check
                .verify("git.example.org", &key(KEY_B))
                .expect_err("changed")
                .contains("does not match")
        );
        assert!(
            check
                .verify("other.example.org", &key(KEY_A))
                .expect_err("unknown")
                .contains("not in known_hosts")
        );
    }

    #[test]
    fn non_default_ports_use_brackets() {
        let check = HostCheck::from_text(
            &format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"),
            ssh_port("ssh://git@127.0.0.1:2222/repo.git"),
        );
        assert_eq!(check.verify("127.0.0.1", &key(KEY_A)), Ok(()));
        let default_port =
            HostCheck::from_text(&format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"), None);
        assert!(default_port.verify("127.0.0.1", &key(KEY_A)).is_err());
    }

    #[test]
    fn hashed_entries_and_revocation() {
        // |1|salt|HMAC-SHA1(salt, "git.example.org") computed with our helper and checked against a
        // known vector below.
        let salt = b"0123456789abcdefghij";
        let engine = base64::engine::general_purpose::STANDARD;
        let hashed = format!(
            "|1|{}|{}",
            engine.encode(salt),
            engine.encode(hmac_sha1(salt, b"git.example.org"))
        );
        let check = HostCheck::from_text(
            &format!("{hashed} ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_B}\n"),
            None,
        );
        assert_eq!(check.verify("git.example.org", &key(KEY_A)), Ok(()));
        assert!(
            check
                .verify("git.example.org", &key(KEY_B))
                .expect_err("revoked")
                .contains("revoked")
        );
        // RFC 2202 test case 2 for HMAC-SHA1.
        let mac = hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn missing_known_hosts_refuses() {
        let check = HostCheck::new("ssh://git@host/repo", None);
        assert!(
            check
                .verify("host", &key(KEY_A))
                .expect_err("refused")
                .contains("always verified")
        );
    }

    #[test]
    fn refs_and_urls() {
        assert_eq!(GitRef::parse("main"), GitRef::Branch("main".into()));
        assert_eq!(GitRef::parse("refs/tags/v1.2"), GitRef::Tag("v1.2".into()));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(GitRef::parse(sha), GitRef::Commit(sha.into()));
        assert_eq!(
            redact_url("https://bob:s3cret@git.example.org/r.git"),
            "https://bob@git.example.org/r.git"
        );
        assert_eq!(
            redact_url("git@github.com:me/repo.git"),
            "git@github.com:me/repo.git"
        );
        assert!(is_remote_url("git@github.com:me/repo.git"));
        assert!(is_remote_url("file:///srv/repo"));
        assert!(!is_remote_url("examples/hello"));
    }
}
