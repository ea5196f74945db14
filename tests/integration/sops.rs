//! SOPS-encrypted manifests. Fixtures are made at test time by the real `sops` and `age-keygen`
//! (built by the testbed); each must decrypt to what `sops --decrypt` prints, sync to the testbed,
//! and, when damaged or undecryptable, fail naming its file with nothing applied, nothing pruned
//! and no plain value in any output.
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kubesync::manifests::{Manifest, parse_file, parse_file_with_keys};
use kubesync::sync::Step;
use serde_json::json;

use crate::support::TestNamespace;
use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::{ManifestDir, configmap, sync_dir};
use crate::support::sops::{AgeKey, age_key, sops_decrypt, sops_encrypt};

const PASSWORD: &str = "sOps-Pw-7c1e-never-shown";

const TYPES: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: types\n  labels:\n    app: demo\nspec:\n  text: hello\n  empty: \"\"\n  number: 42\n  negative: -7\n  ratio: 0.25\n  whole: 2.0\n  enabled: true\n  disabled: false\n  nothing: null\n  list:\n  - one\n  - 2\n  - nested: value\n  multiline: |\n    line one\n    line two\n  unicode: \"日本語 ✓\"\n  when: 2001-12-14T21:59:43.10-05:00\n";

fn secret(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\nstringData:\n  password: {PASSWORD}\n  username: rails\n"
    )
}

/// Encrypts `plain` (written as `name`) and returns the encrypted file's path.
fn encrypted(
    dir: &Path,
    name: &str,
    plain: &str,
    to: &[&AgeKey],
    args: &[&str],
) -> std::path::PathBuf {
    let plain_path = dir.join(format!("plain-{name}"));
    std::fs::write(&plain_path, plain).expect("write plain");
    let text = sops_encrypt(&plain_path, to, args);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write encrypted");
    path
}

/// A fixture: its file name, its plain text, its recipients, sops's flags, the key to decrypt with.
type Case<'a> = (&'a str, String, Vec<&'a AgeKey>, Vec<&'a str>, &'a AgeKey);

fn objects(manifests: &[Manifest]) -> Vec<serde_json::Value> {
    manifests.iter().map(|m| m.object.clone()).collect()
}

#[test]
fn every_value_type_and_layout_decrypts_to_what_sops_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (age_key(dir.path(), "a"), age_key(dir.path(), "b"));
    let multi = format!("{}---\n{}", configmap("one", "1"), configmap("two", "2"));
    let json_doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"},
        "data": {"k": "v"}, "spec": {"n": 3, "f": 1.5, "t": true, "l": [1, "x"]}});
    let partial = ["--encrypted-regex", "^(data|stringData)$"];
    // `plain` is only what sops encrypts: the comparison is with what sops prints, which writes
    // some values its own way (`2.0` as `2`).
    let cases: Vec<Case> = vec![
        ("types.yaml", TYPES.into(), vec![&a], vec![], &a),
        ("partial.yaml", secret("db"), vec![&a], partial.to_vec(), &a),
        ("two-recipients.yaml", secret("db"), vec![&a, &b], partial.to_vec(), &b),
        (
            "suffix.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s\ndata:\n  token: t0k\n  note_plain: visible\nspec:\n  when_plain: 2001-12-14T21:59:43.10-05:00\n  count_plain: 3\n  ratio_plain: 1.50\n  on_plain: true\n".into(),
            vec![&a],
            vec!["--unencrypted-suffix", "_plain"],
            &a,
        ),
        (
            "mac-only.yaml",
            TYPES.into(),
            vec![&a],
            vec!["--mac-only-encrypted", "--encrypted-regex", "^(text|number)$"],
            &a,
        ),
        ("multi.yaml", multi, vec![&a], vec![], &a),
        ("types.json", json_doc.to_string(), vec![&a], vec![], &a),
    ];
    for (name, plain, to, args, key) in cases {
        let path = encrypted(dir.path(), name, &plain, &to, &args);
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            String::from_utf8_lossy(&bytes).contains("ENC[AES256_GCM"),
            "{name}: sops encrypted something"
        );
        let ours = parse_file_with_keys(name, &bytes, &key.keys())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let printed = sops_decrypt(&path, key);
        let theirs = parse_file(name, printed.as_bytes()).expect("sops output parses");
        assert_eq!(
            objects(&ours),
            objects(&theirs),
            "{name}: as sops --decrypt prints it"
        );
        let text = serde_json::to_string(&objects(&ours)).expect("json");
        assert!(!text.contains("ENC["), "{name}: every value is decrypted");
    }
}

/// Damaged or undecryptable versions of an encrypted file, each with what its error must say.
fn bad_variants(good: &str, dir: &Path, a: &AgeKey) -> Vec<(&'static str, String, &'static str)> {
    let tampered_value = {
        let at = good
            .find("password: ENC[AES256_GCM,data:")
            .expect("encrypted password")
            + "password: ENC[AES256_GCM,data:".len();
        let mut t = good.to_string();
        let flipped = if &t[at..at + 1] == "A" { "B" } else { "A" };
        t.replace_range(at..at + 1, flipped);
        t
    };
    let tampered_mac = {
        let at = good.find("mac: ENC[AES256_GCM,data:").expect("mac")
            + "mac: ENC[AES256_GCM,data:".len();
        let mut t = good.to_string();
        let flipped = if &t[at..at + 1] == "A" { "B" } else { "A" };
        t.replace_range(at..at + 1, flipped);
        t
    };
    let plain_edit = good.replace("type: Opaque", "type: Changed");
    assert_ne!(plain_edit, good, "the type is in the clear");
    let truncated = good[..good.len() / 2].to_string();
    let without_sops = good[..good.find("sops:").expect("sops entry")].to_string();
    let other = age_key(dir, "other");
    let for_other = encrypted(
        dir,
        "for-other.yaml",
        &secret("db"),
        &[&other],
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    let _ = a;
    vec![
        (
            "a tampered value",
            tampered_value,
            "password cannot be decrypted",
        ),
        (
            "a tampered MAC",
            tampered_mac,
            "message authentication code",
        ),
        (
            "an added plain value",
            plain_edit,
            "message authentication code",
        ),
        ("a truncated file", truncated, "secret.enc.yaml"),
        ("the sops entry removed", without_sops, "no sops entry"),
        (
            "a file for another key",
            std::fs::read_to_string(for_other).expect("read"),
            "none of the age keys",
        ),
    ]
}

#[tokio::test]
async fn encrypted_secrets_sync_and_damaged_files_change_nothing() {
    let ns = TestNamespace::new("sops").await;
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let a = age_key(keys_dir.path(), "a");
    let good = std::fs::read_to_string(encrypted(
        keys_dir.path(),
        "s.yaml",
        &secret("db"),
        &[&a],
        &["--encrypted-regex", "^(data|stringData)$"],
    ))
    .expect("read");
    let repo = ManifestDir::new();
    repo.write("keep.yaml", &configmap("keep", "1"));
    repo.write("secret.enc.yaml", &good);
    let with_a = |o: &mut kubesync::sync::SyncOptions| o.target.decryption = a.keys();
    let first = sync_dir(&ns, repo.path(), with_a).await;
    assert!(first.succeeded(), "{:?}", first.error_messages());
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let synced = secrets.get("db").await.expect("the Secret is applied");
    let data = synced.data.unwrap_or_default();
    assert_eq!(
        data.get("password").map(|v| v.0.as_slice()),
        Some(PASSWORD.as_bytes())
    );

    // Every bad variant: the sync fails naming the file; keep.yaml, removed from Git in the same
    // change, is not pruned; the Secret keeps its value; no output holds the password.
    repo.remove("keep.yaml");
    let mut variants = bad_variants(&good, keys_dir.path(), &a);
    variants.push(("no key at all", good.clone(), "no age key was given"));
    for (what, text, says) in variants {
        repo.write("secret.enc.yaml", &text);
        let no_keys = what == "no key at all";
        let report = sync_dir(&ns, repo.path(), |o| {
            if !no_keys {
                o.target.decryption = a.keys();
            }
        })
        .await;
        let errors = report.error_messages().join("\n");
        assert!(!report.succeeded(), "{what}: the sync fails");
        assert_eq!(report.failure, Some(Step::Manifests), "{what}: {errors}");
        assert!(
            errors.contains("secret.enc.yaml"),
            "{what}: names the file: {errors}"
        );
        assert!(errors.contains(says), "{what}: says {says:?}: {errors}");
        let output = serde_json::to_string(&report).expect("json");
        assert!(
            !output.contains(PASSWORD) && !errors.contains(PASSWORD),
            "{what}: leaks nothing"
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
        assert!(
            configmaps.get_opt("keep").await.expect("get").is_some(),
            "{what}: nothing pruned"
        );
        let still = secrets.get("db").await.expect("secret");
        assert_eq!(
            still
                .data
                .unwrap_or_default()
                .get("password")
                .map(|v| v.0.clone()),
            Some(PASSWORD.as_bytes().to_vec()),
            "{what}: nothing applied"
        );
    }
}

#[tokio::test]
async fn a_gitsync_decrypts_with_its_secret_and_survives_a_key_rotation() {
    let ns = TestNamespace::new("sops-ctl").await;
    install_crd(&ns.client).await;
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (
        age_key(keys_dir.path(), "old"),
        age_key(keys_dir.path(), "new"),
    );
    let partial = ["--encrypted-regex", "^(data|stringData)$"];
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let key_secret = |keys: &[&AgeKey]| -> Secret {
        let data: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("key{i}.agekey"), json!(k.text)))
            .collect();
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "sops-age"}, "stringData": data}))
        .expect("secret")
    };
    secrets
        .create(&Default::default(), &key_secret(&[&old]))
        .await
        .expect("key secret");
    let repo = GitRepo::new();
    let enc = |key: &AgeKey| {
        std::fs::read_to_string(encrypted(
            keys_dir.path(),
            "s.yaml",
            &secret("db"),
            &[key],
            &partial,
        ))
        .expect("read")
    };
    repo.write("app/secret.enc.yaml", &enc(&old));
    let first = repo.commit_and_push("encrypted for the old key");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "app",
        json!({"url": url, "path": "app", "interval": "2s",
            "decryption": {"provider": "sops", "secretRef": {"name": "sops-age"}}}),
    )
    .await;
    wait_for_revision(&api, "app", &first, Duration::from_secs(60)).await;
    let value = |s: Secret| {
        s.data
            .unwrap_or_default()
            .get("password")
            .map(|v| v.0.clone())
    };
    assert_eq!(
        value(secrets.get("db").await.expect("db")),
        Some(PASSWORD.as_bytes().to_vec())
    );

    // Replaces the Secret's keys: only those given remain.
    let set_keys = |keys: &[&AgeKey]| {
        let mut replacement = key_secret(keys);
        let secrets = secrets.clone();
        async move {
            let current = secrets.get("sops-age").await.expect("get");
            replacement.metadata.resource_version = current.metadata.resource_version;
            (secrets
                .replace("sops-age", &Default::default(), &replacement)
                .await)
                .expect("replace the keys");
        }
    };
    // Rotation: both keys in the Secret, the file re-encrypted for the new key only, then the
    // old key removed. Every revision is applied; the Secret never changes.
    set_keys(&[&old, &new]).await;
    repo.write("app/secret.enc.yaml", &enc(&new));
    let second = repo.commit_and_push("re-encrypted for the new key");
    wait_for_revision(&api, "app", &second, Duration::from_secs(60)).await;
    set_keys(&[&new]).await;
    repo.write("app/other.yaml", &configmap("after-rotation", "1"));
    let third = repo.commit_and_push("a change after the rotation");
    wait_for_revision(&api, "app", &third, Duration::from_secs(60)).await;
    assert_eq!(
        value(secrets.get("db").await.expect("db")),
        Some(PASSWORD.as_bytes().to_vec())
    );
    let log = controller.log_text();
    assert!(
        !log.contains(PASSWORD),
        "the controller's log holds no plain value"
    );
    let status = serde_json::to_string(&api.get("app").await.expect("get").status).expect("json");
    assert!(!status.contains(PASSWORD));
}
