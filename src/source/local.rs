//! A plain directory as a source: its revision is a hash of its content.
use std::path::Path;

use sha2::{Digest, Sha256};

use super::spec::{Checkout, SourceError};

pub fn local_checkout(dir: &Path) -> Result<Checkout, SourceError> {
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
        commit: None,
        fetched: false,
    })
}
