//! Manifests on disk and syncs of them with the engine.
use std::path::Path;
use std::time::Duration;

use kubesync::sync::{Action, SyncOptions, SyncReport};

use super::TestNamespace;

/// A directory of manifests that a test edits between syncs.
pub struct ManifestDir {
    pub dir: tempfile::TempDir,
}

impl ManifestDir {
    pub fn new() -> Self {
        ManifestDir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn write(&self, path: &str, content: &str) -> &Self {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write manifest");
        self
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.path().join(path)).expect("remove manifest");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: \"{value}\"\n"
    )
}

/// A Deployment whose Pods kwok runs (the image is never pulled).
pub fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec: {{containers: [{{name: c, image: registry.invalid/none:1}}]}}\n"
    )
}

pub async fn sync_dir(
    ns: &TestNamespace,
    dir: &Path,
    tweak: impl FnOnce(&mut SyncOptions),
) -> SyncReport {
    let mut options = SyncOptions::new(&ns.name, &ns.name);
    tweak(&mut options);
    let spec = kubesync::source::SourceSpec {
        url: dir.display().to_string(),
        reference: Default::default(),
        auth: Default::default(),
        timeout: Duration::from_secs(30),
    };
    let cache = tempfile::tempdir().expect("cache");
    kubesync::sync::sync_source(
        &kubesync::sync::Clients::from(&ns.client),
        &spec,
        cache.path(),
        &options,
    )
    .await
}

pub fn result_of<'a>(report: &'a SyncReport, object: &str) -> &'a Action {
    &report
        .objects
        .iter()
        .find(|o| o.object == object)
        .unwrap_or_else(|| panic!("{object} not in report: {:#?}", report.objects))
        .result
}
