//! Source stage: fetch one ref of a Git repository (or read a plain directory) into the cache.
//!
//! Git: a bare repository per URL in the cache directory. Each sync lists the remote's refs first;
//! when the wanted commit is already present nothing is fetched. Otherwise the ref is fetched
//! shallowly with a forced refspec (a force-push is followed, never merged) and the commit's tree is
//! written to `trees/<commit>`. SSH host keys are always checked against a known_hosts file: unknown
//! and changed keys are refused. All git2 work runs on a blocking thread with a deadline.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod git;
mod known_hosts;
mod local;
mod spec;

pub use known_hosts::{HostCheck, HostKeyError};
pub use spec::{Auth, Checkout, CommitInfo, GitRef, SourceError, SourceSpec, redact_url};

fn is_remote_url(url: &str) -> bool {
    url.contains("://") || (url.contains('@') && url.contains(':') && !Path::new(url).exists())
}

/// Fetches (or reads) the source into `cache_dir`.
pub async fn fetch(spec: &SourceSpec, cache_dir: &Path) -> Result<Checkout, SourceError> {
    if !is_remote_url(&spec.url) {
        let dir = PathBuf::from(&spec.url);
        return tokio::task::spawn_blocking(move || local::local_checkout(&dir))
            .await
            .map_err(|e| SourceError::Local {
                path: spec.url.clone(),
                message: e.to_string(),
            })?;
    }
    let spec2 = spec.clone();
    let cache = cache_dir.to_path_buf();
    let deadline = Instant::now() + spec.timeout;
    let task = tokio::task::spawn_blocking(move || git::git_checkout(&spec2, &cache, deadline));
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

#[cfg(test)]
mod tests {
    use super::*;

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
