//! `kubesync diff --output markdown`: the homelab example against an empty namespace, compared
//! with a golden file (`KUBESYNC_BLESS=1` rewrites it), and the example CI workflow's diff step
//! run as written against the testbed.
use std::path::Path;
use std::process::Command;

use crate::support::git::GitRepo;
use crate::support::{TestNamespace, repo_root, run};

const GOLDEN: &str = "tests/golden/homelab-diff.md";
const GOLDEN_CHANGE: &str = "tests/golden/homelab-diff-change.md";

/// Runs `kubesync diff`; returns its output and exit code.
fn diff_markdown(repo: &Path, namespace: &str) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "diff", "--output", "markdown", "--name", "homelab", "-n", namespace,
        ])
        .args(["--path", "examples/homelab", "--repo"])
        .arg(repo)
        .output()
        .expect("kubesync diff runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The output with what changes from run to run (namespace, revision) replaced.
fn normalized(text: &str, namespace: &str) -> String {
    let revision = (text.lines().next())
        .and_then(|header| header.rsplit('`').nth(1))
        .expect("a revision in the header")
        .to_string();
    let text = text
        .replace(namespace, "homelab")
        .replace(&revision, "REVISION");
    without_uids(&text)
}

/// UIDs the server gives (a Job's selector) replaced by `UID`.
fn without_uids(text: &str) -> String {
    let is_uid = |w: &str| {
        let parts: Vec<&str> = w.split('-').collect();
        parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && parts
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_hexdigit() || c == '-' {
            word.push(c);
            continue;
        }
        out.push_str(if is_uid(&word) { "UID" } else { &word });
        word.clear();
        out.push(c);
    }
    out.push_str(if is_uid(&word) { "UID" } else { &word });
    out
}

#[tokio::test]
async fn homelab_diff_as_markdown_matches_the_golden_file() {
    let ns = TestNamespace::new("review").await;
    let root = repo_root();
    let repo = GitRepo::new();
    std::fs::create_dir_all(repo.work().join("examples")).expect("mkdir");
    run(Command::new("cp")
        .arg("-r")
        .arg(root.join("examples/homelab"))
        .arg(repo.work().join("examples/homelab")));
    repo.commit_and_push("the homelab example");
    let (text, code) = diff_markdown(&repo.work(), &ns.name);
    assert_eq!(code, 1, "changes to make: {text}");
    let text = normalized(&text, &ns.name);
    let golden = root.join(GOLDEN);
    if std::env::var_os("KUBESYNC_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&golden).expect("the golden file");
    assert_eq!(text, expected, "{GOLDEN} (KUBESYNC_BLESS=1 to rewrite it)");
    assert!(
        !text.contains("applyset.kubernetes.io"),
        "no bookkeeping in a review"
    );

    // Synced; then a pull request adds a setting, scales Rails and drops the Ingress.
    run(Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args([
            "sync",
            "--name",
            "homelab",
            "-n",
            &ns.name,
            "--path",
            "examples/homelab",
            "--repo",
        ])
        .arg(repo.work()));
    let configmap = repo.work().join("examples/homelab/rails/configmap.yaml");
    let text = std::fs::read_to_string(&configmap).expect("configmap");
    repo.write(
        "examples/homelab/rails/configmap.yaml",
        &text.replace(
            "RAILS_ENV: production",
            "RAILS_ENV: production\n  RAILS_MAX_THREADS: \"3\"",
        ),
    );
    let deployment = repo.work().join("examples/homelab/rails/deployment.yaml");
    let text = std::fs::read_to_string(&deployment).expect("deployment");
    assert!(text.contains("replicas: 2"), "{text}");
    repo.write(
        "examples/homelab/rails/deployment.yaml",
        &text.replacen("replicas: 2", "replicas: 3", 1),
    );
    repo.remove("examples/homelab/nginx/ingress.yaml");
    repo.commit_and_push("a pull request");
    let (text, code) = diff_markdown(&repo.work(), &ns.name);
    assert_eq!(code, 1, "changes to make: {text}");
    let text = normalized(&text, &ns.name);
    let golden = root.join(GOLDEN_CHANGE);
    if std::env::var_os("KUBESYNC_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&golden).expect("the golden file");
    assert_eq!(
        text, expected,
        "{GOLDEN_CHANGE} (KUBESYNC_BLESS=1 to rewrite it)"
    );
    assert!(
        text.contains("**0 to create, 2 to change, 1 to prune**"),
        "{text}"
    );
}

/// The diff step of examples/ci/kubesync-diff.yaml, as written (its namespace aside), on a
/// fresh clone: it exits 0 or 1 and leaves a comment in diff.md.
#[tokio::test]
async fn the_example_workflow_diff_step_runs_against_the_testbed() {
    let ns = TestNamespace::new("review-ci").await;
    let root = repo_root();
    let workflow =
        std::fs::read_to_string(root.join("examples/ci/kubesync-diff.yaml")).expect("workflow");
    let workflow: serde_json::Value = serde_saphyr::from_str(&workflow).expect("YAML");
    let steps = workflow["jobs"]["diff"]["steps"].as_array().expect("steps");
    let step = (steps.iter())
        .find(|s| s["name"] == "What this pull request does to the cluster")
        .expect("the diff step");
    let script = step["run"]
        .as_str()
        .expect("run")
        .replace("--namespace homelab", &format!("--namespace {}", ns.name));
    let clone = tempfile::tempdir().expect("tempdir");
    run(Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&root)
        .arg(clone.path().join("repo")));
    let repo = clone.path().join("repo");
    let bin = Path::new(env!("CARGO_BIN_EXE_kubesync"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(&repo)
        .env("PATH", path)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "the step succeeds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let comment = std::fs::read_to_string(repo.join("diff.md")).expect("diff.md");
    assert!(
        comment.starts_with("### kubesync diff: `homelab` at `"),
        "{comment}"
    );
    assert!(comment.contains("to create"), "{comment}");
}
