//! Git: a bare repository per URL in the cache directory. Each sync lists the remote's refs
//! first; when the wanted commit is already present nothing is fetched. Otherwise the ref is
//! fetched shallowly and the commit's tree is written to `trees/<commit>`. SSH host keys are
//! always checked. Runs on a blocking thread, with a deadline.
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::known_hosts::{HostCheck, HostKeyError};
use super::spec::{Auth, Checkout, CommitInfo, GitRef, SourceError, SourceSpec, redact_url};

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

/// One fetch of one remote into the bare repository of the cache.
struct Fetch<'a> {
    spec: &'a SourceSpec,
    /// The URL without credentials, for messages.
    url: String,
    deadline: Instant,
    host_check: HostCheck,
    /// Why the host key was refused, when it was (libgit2 only reports a failed connection).
    host_failure: RefCell<Option<HostKeyError>>,
}

impl Fetch<'_> {
    fn git_error(&self, e: git2::Error) -> SourceError {
        SourceError::Git {
            url: self.url.clone(),
            message: e.message().to_string(),
        }
    }

    fn failure(&self, e: git2::Error) -> SourceError {
        map_failure(
            e,
            &self.host_failure,
            &self.url,
            self.deadline,
            self.spec.timeout,
        )
    }

    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        callbacks(
            &self.spec.auth,
            &self.host_check,
            &self.host_failure,
            self.deadline,
        )
    }

    /// The full name of the wanted ref, or the wanted commit.
    fn wanted_ref(&self) -> Result<String, &str> {
        match &self.spec.reference {
            GitRef::Branch(b) => Ok(format!("refs/heads/{b}")),
            GitRef::Tag(t) => Ok(format!("refs/tags/{t}")),
            GitRef::Commit(sha) => Err(sha),
        }
    }

    /// The commit the ref points at now, from the remote's ref list (no objects are fetched).
    fn resolve(&self, remote: &mut git2::Remote<'_>) -> Result<git2::Oid, SourceError> {
        let connection = remote
            .connect_auth(git2::Direction::Fetch, Some(self.callbacks()), None)
            .map_err(|e| self.failure(e))?;
        let name = match self.wanted_ref() {
            Ok(name) => name,
            Err(sha) => return git2::Oid::from_str(sha).map_err(|e| self.git_error(e)),
        };
        let heads = connection.list().map_err(|e| self.git_error(e))?;
        let peeled = format!("{name}^{{}}");
        let found = heads
            .iter()
            .find(|h| h.name() == peeled)
            .or_else(|| heads.iter().find(|h| h.name() == name));
        found.map(|h| h.oid()).ok_or(SourceError::RefNotFound {
            url: self.url.clone(),
            reference: name,
        })
    }

    /// Fetches `target` shallowly with a forced refspec (a force-push is followed, never
    /// merged).
    fn fetch(&self, remote: &mut git2::Remote<'_>, target: git2::Oid) -> Result<(), SourceError> {
        let refspec = match self.wanted_ref() {
            Ok(name) => format!("+{name}:refs/kubesync/target"),
            Err(_) => format!("+{target}:refs/kubesync/target"),
        };
        let mut options = git2::FetchOptions::new();
        options.remote_callbacks(self.callbacks());
        // libgit2's local transport cannot fetch shallowly; everything else can.
        if !self.spec.url.starts_with("file://") {
            options.depth(1);
        }
        options.download_tags(git2::AutotagOption::None);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| self.failure(e))
    }
}

/// The cache's bare repository for `base`, made anew when it cannot be opened.
fn open_repository(base: &Path) -> Result<git2::Repository, SourceError> {
    let repo_dir = base.join("repo.git");
    if let Ok(repo) = git2::Repository::open_bare(&repo_dir) {
        return Ok(repo);
    }
    let _ = std::fs::remove_dir_all(&repo_dir);
    git2::Repository::init_bare(&repo_dir).map_err(|e| SourceError::Cache {
        dir: repo_dir.display().to_string(),
        message: e.message().to_string(),
    })
}

pub fn git_checkout(
    spec: &SourceSpec,
    cache_dir: &Path,
    deadline: Instant,
) -> Result<Checkout, SourceError> {
    init_git(spec.timeout);
    let base = cache_dir.join(cache_key(&spec.url));
    let cache_err = |e: std::io::Error| SourceError::Cache {
        dir: base.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&base).map_err(cache_err)?;
    let repo = open_repository(&base)?;
    let run = Fetch {
        spec,
        url: redact_url(&spec.url),
        deadline,
        host_check: HostCheck::new(&spec.url, spec.auth.known_hosts.as_deref()),
        host_failure: RefCell::new(None),
    };
    let mut remote = repo
        .remote_anonymous(&spec.url)
        .map_err(|e| run.git_error(e))?;
    let target = run.resolve(&mut remote)?;
    // Fetch only when the commit is not here yet.
    let fetched = repo.find_commit(target).is_err();
    if fetched {
        run.fetch(&mut remote, target)?;
    }
    let commit = repo.find_commit(target).map_err(|e| SourceError::Git {
        url: run.url.clone(),
        message: format!("commit {target} not available after fetch: {}", e.message()),
    })?;
    let _ = repo.reference("refs/kubesync/target", target, true, "kubesync sync");
    let dir = write_checkout(&repo, &commit, &base.join("trees")).map_err(|e| match e {
        TreeError::Io(e) => cache_err(e),
        other => SourceError::Git {
            url: run.url.clone(),
            message: other.to_string(),
        },
    })?;
    Ok(Checkout {
        dir,
        revision: target.to_string(),
        commit_time: Some(commit.time().seconds()),
        fetched,
        commit: Some(CommitInfo {
            subject: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
                .into_owned(),
            author: String::from_utf8_lossy(commit.author().name_bytes()).into_owned(),
        }),
    })
}

/// Writes the commit's tree to `trees/<commit>` (once per commit, through a temporary folder)
/// and drops older trees.
fn write_checkout(
    repo: &git2::Repository,
    commit: &git2::Commit<'_>,
    trees: &Path,
) -> Result<PathBuf, TreeError> {
    let target = commit.id();
    let dir = trees.join(target.to_string());
    if !dir.is_dir() {
        let tmp = trees.join(format!(".tmp-{target}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        write_tree(repo, &commit.tree()?, &tmp)?;
        std::fs::rename(&tmp, &dir)?;
    }
    if let Ok(entries) = std::fs::read_dir(trees) {
        for entry in entries.flatten().filter(|e| e.path() != dir) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(dir)
}

fn map_failure(
    e: git2::Error,
    host_failure: &RefCell<Option<HostKeyError>>,
    url: &str,
    deadline: Instant,
    timeout: Duration,
) -> SourceError {
    if let Some(message) = host_failure.borrow_mut().take() {
        return SourceError::HostKey {
            url: url.into(),
            message: message.to_string(),
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
    host_failure: &'a RefCell<Option<HostKeyError>>,
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
            let verified = match hostkey.hostkey() {
                Some(key) => host_check.verify(hostname, key),
                None => Err(HostKeyError::Unavailable),
            };
            return match verified {
                Ok(()) => Ok(git2::CertificateCheckStatus::CertificateOk),
                Err(refused) => {
                    let error = git2::Error::from_str(&refused.to_string());
                    *host_failure.borrow_mut() = Some(refused);
                    Err(error)
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

/// Why a commit's tree could not be written out.
#[derive(Debug, thiserror::Error)]
enum TreeError {
    #[error("a tree entry has a non-UTF-8 name")]
    NonUtf8Name,
    #[error("refusing tree entry name {0:?}")]
    BadName(String),
    #[error("symlink {0} has a non-UTF-8 target")]
    NonUtf8Symlink(String),
    #[error("{0}")]
    Git(#[from] git2::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes a tree's blobs and symlinks under `dir`. Names are validated: a tree can never write
/// outside `dir`.
fn write_tree(repo: &git2::Repository, tree: &git2::Tree<'_>, dir: &Path) -> Result<(), TreeError> {
    for entry in tree.iter() {
        let name = entry.name().map_err(|_| TreeError::NonUtf8Name)?;
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(TreeError::BadName(name.into()));
        }
        let path = dir.join(name);
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                std::fs::create_dir_all(&path)?;
                write_tree(repo, &sub, &path)?;
            }
            Some(git2::ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id())?;
                if entry.filemode() == 0o120000 {
                    let target = std::str::from_utf8(blob.content())
                        .map_err(|_| TreeError::NonUtf8Symlink(name.into()))?;
                    std::os::unix::fs::symlink(target, &path)?;
                } else {
                    std::fs::write(&path, blob.content())?;
                }
            }
            // Submodules (commits) are not followed.
            _ => {}
        }
    }
    Ok(())
}
