//! Renders kept on disk between syncs, one per kustomization directory and options: a render is
//! redone only when the revision or the options change. Writing a directory's new render removes
//! its older ones, so the cache holds one file per rendered directory.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where one render of one directory is kept.
pub struct Entry {
    dir: PathBuf,
    /// Names every render of the directory under these options.
    slot: String,
    /// The file of this revision's render.
    path: PathBuf,
}

impl Entry {
    pub fn new(cache_dir: &Path, kustomization: &str, options_key: &str, revision: &str) -> Entry {
        let slot = short_hash(&[kustomization, options_key]);
        let path = cache_dir.join(format!("{slot}-{}.yaml", short_hash(&[revision])));
        Entry {
            dir: cache_dir.to_path_buf(),
            slot,
            path,
        }
    }

    pub fn read(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.path).ok()
    }

    /// Best effort: a render that cannot be cached is still used.
    pub fn write(&self, rendered: &[u8]) {
        if let Err(e) = self.try_write(rendered) {
            tracing::debug!(error = %e, dir = %self.dir.display(), "render not cached");
        }
    }

    fn try_write(&self, rendered: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let prefix = format!("{}-", self.slot);
        for old in std::fs::read_dir(&self.dir)?.flatten() {
            if old.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(old.path());
            }
        }
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, rendered)?;
        std::fs::rename(&partial, &self.path)
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_revision_replaces_the_old_render_of_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Entry::new(dir.path(), "overlays/home", "o", "rev1");
        let other = Entry::new(dir.path(), "overlays/staging", "o", "rev1");
        assert_eq!(first.read(), None);
        first.write(b"one");
        other.write(b"other");
        assert_eq!(first.read().as_deref(), Some(&b"one"[..]));
        let second = Entry::new(dir.path(), "overlays/home", "o", "rev2");
        assert_eq!(second.read(), None);
        second.write(b"two");
        assert_eq!(first.read(), None, "the old revision's render is gone");
        assert_eq!(second.read().as_deref(), Some(&b"two"[..]));
        assert_eq!(other.read().as_deref(), Some(&b"other"[..]));
        let changed_options = Entry::new(dir.path(), "overlays/home", "p", "rev2");
        assert_eq!(changed_options.read(), None);
    }
}
