//! The bad-input corpus (`tests/bad-input/cases/`, written by `generate.py`), each case synced by
//! the `kubesync` binary over a set that already holds an object: a clear error naming the file
//! (and document), a non-zero exit, no panic, nothing of invalid input applied, nothing pruned,
//! and the canary secret value in no output.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;

use crate::support::manifests::configmap;
use crate::support::{TestNamespace, repo_root};

const CANARY: &str = "CANARY-s3cr3t-value";

struct Expect {
    kind: String,
    file: Option<String>,
    document: Option<String>,
    says: Option<String>,
}

fn read_expect(path: &Path) -> Expect {
    let text = std::fs::read_to_string(path).expect("expect file");
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map(String::from)
    };
    Expect {
        kind: get("kind").expect("kind"),
        file: get("file"),
        document: get("document"),
        says: get("says"),
    }
}

/// Copies a case's repository, keeping symlinks as symlinks, renaming `_git` to `.git` and
/// putting the test namespace where the corpus says NAMESPACE.
fn copy_repo(from: &Path, to: &Path, namespace: &str) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().replace("_git", ".git");
        let target = to.join(name);
        let kind = entry.file_type().expect("type");
        if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("link");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else if kind.is_dir() {
            copy_repo(&entry.path(), &target, namespace);
        } else {
            let bytes = std::fs::read(entry.path()).expect("read");
            let bytes = match String::from_utf8(bytes) {
                Ok(text) => text.replace("NAMESPACE", namespace).into_bytes(),
                Err(e) => e.into_bytes(),
            };
            std::fs::write(&target, bytes).expect("write");
        }
    }
}

fn kubesync_sync(dir: &Path, name: &str, namespace: &str, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(["sync", "--repo"])
        .arg(dir)
        .args(["--name", name, "-n", namespace, "-o", "json", "--cache-dir"])
        .arg(cache)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("kubesync runs")
}

/// Checks one case's outcome; returns a description of what is wrong, if anything.
fn check(case: &str, expect: &Expect, out: &Output) -> Result<Value, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if stderr.contains("panicked") || out.status.code().is_none() {
        return Err(format!("{case}: crashed: {stderr}"));
    }
    if stdout.contains(CANARY) || stderr.contains(CANARY) {
        return Err(format!("{case}: the secret value appears in the output"));
    }
    let report: Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("{case}: no JSON report ({e}): {stdout}{stderr}"))?;
    let ok = out.status.success();
    if expect.kind == "ok" {
        return if ok {
            Ok(report)
        } else {
            Err(format!("{case}: should sync: {stdout}"))
        };
    }
    if ok || out.status.code() != Some(1) {
        return Err(format!(
            "{case}: should fail with exit 1, got {:?}: {stdout}",
            out.status.code()
        ));
    }
    let mut text: Vec<String> = report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    text.extend(
        report["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["result"]["action"] == "failed")
            .map(|o| {
                o["result"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }),
    );
    let all = text.join("\n");
    if let Some(file) = &expect.file
        && !all.contains(file.as_str())
    {
        return Err(format!("{case}: the error names {file}: {all}"));
    }
    if let Some(doc) = &expect.document
        && !all.contains(&format!("(document {doc})"))
        && !all.contains(&format!("(document {doc}, item"))
    {
        return Err(format!("{case}: the error names document {doc}: {all}"));
    }
    if let Some(says) = &expect.says
        && !all.to_lowercase().contains(&says.to_lowercase())
    {
        return Err(format!("{case}: the error says {says:?}: {all}"));
    }
    if report["summary"]["pruned"] != 0 {
        return Err(format!("{case}: something was pruned: {stdout}"));
    }
    if expect.kind == "invalid" {
        let applied = report["objects"].as_array().into_iter().flatten().any(|o| {
            matches!(
                o["result"]["action"].as_str(),
                Some("created" | "configured")
            )
        });
        if applied {
            return Err(format!(
                "{case}: invalid input, yet objects were applied: {stdout}"
            ));
        }
    }
    Ok(report)
}

fn generated_cases(root: &Path) -> Vec<(String, PathBuf, Expect)> {
    let mut cases = Vec::new();
    // Larger than the 8 MiB file limit.
    let huge = root.join("huge-file/repo");
    std::fs::create_dir_all(&huge).expect("mkdir");
    let mut text = configmap("huge", "x");
    text.push_str(&format!("# {}\n", "a".repeat(9 * 1024 * 1024)));
    std::fs::write(huge.join("huge.yaml"), text).expect("write");
    cases.push((
        "huge-file".into(),
        huge,
        Expect {
            kind: "invalid".into(),
            file: Some("huge.yaml".into()),
            document: None,
            says: None,
        },
    ));
    // Billion laughs: aliases that expand exponentially.
    let bomb = root.join("alias-bomb/repo");
    std::fs::create_dir_all(&bomb).expect("mkdir");
    let mut yaml = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..12 {
        let p = i - 1;
        yaml.push_str(&format!(
            "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    std::fs::write(bomb.join("bomb.yaml"), yaml).expect("write");
    cases.push((
        "alias-bomb".into(),
        bomb,
        Expect {
            kind: "invalid".into(),
            file: Some("bomb.yaml".into()),
            document: Some("0".into()),
            says: None,
        },
    ));
    cases
}

#[tokio::test]
async fn every_bad_input_case_fails_clearly_and_changes_nothing() {
    let ns = TestNamespace::new("bad").await;
    let corpus = repo_root().join("tests/bad-input/cases");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    // The set already holds one object: any prune would take it.
    let baseline = work.path().join("baseline");
    std::fs::create_dir_all(&baseline).expect("mkdir");
    std::fs::write(baseline.join("keep.yaml"), configmap("keep-me", "1")).expect("write");
    let out = kubesync_sync(&baseline, "bad", &ns.name, &cache);
    assert!(
        out.status.success(),
        "baseline: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut cases: Vec<(String, PathBuf, Expect)> = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for name in names {
        let dir = work.path().join("cases").join(&name);
        copy_repo(&corpus.join(&name).join("repo"), &dir, &ns.name);
        let expect = read_expect(&corpus.join(&name).join("expect"));
        cases.push((name, dir, expect));
    }
    cases.extend(generated_cases(&work.path().join("generated")));
    assert!(cases.len() >= 100, "at least 100 cases: {}", cases.len());

    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut failures = Vec::new();
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (name, dir, expect) in &cases {
        *by_kind.entry(expect.kind.clone()).or_default() += 1;
        // Allowed input has a set of its own; everything else shares the baseline's.
        let sync_name = if expect.kind == "ok" {
            format!("ok-{}", by_kind["ok"])
        } else {
            "bad".to_string()
        };
        let out = kubesync_sync(dir, &sync_name, &ns.name, &cache);
        if let Err(problem) = check(name, expect, &out) {
            failures.push(problem);
        }
        if expect.kind != "ok" && configmaps.get_opt("keep-me").await.ok().flatten().is_none() {
            failures.push(format!("{name}: the baseline object was deleted"));
            let _ = kubesync_sync(&baseline, "bad", &ns.name, &cache);
        }
    }
    eprintln!("bad-input corpus: {} cases {by_kind:?}", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Objects of invalid cases were never created.
    for absent in ["g1", "g2", "ok"] {
        assert!(
            configmaps.get_opt(absent).await.expect("get").is_none(),
            "{absent} was applied"
        );
    }
}
