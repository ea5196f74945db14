//! Secret values never leave: known values are planted in Secrets in Git, in a Secret the server
//! refuses, in HTTPS credentials (right and wrong) and in a webhook token; the controller and
//! the CLI run end to end, failures and drift included; then its log, the Events, the GitSync
//! status, /metrics, the status page and every CLI output are searched for them.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubesync::crd::GitSync;
use serde_json::json;

use crate::support::controller::{
    ControllerProcess, create_gitsync, http, install_crd, sign_webhook,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::servers::{PASSWORD, USER, start_lighttpd};
use crate::support::sops::{age_key, sops_encrypt};
use crate::support::{TestNamespace, eventually};

const IN_GIT: &str = "canary-in-git-4Fz9";
const IN_GIT_DATA: &str = "canary-in-data-Qm2x";
const IN_REJECTED: &str = "canary-rejected-Lp7w";
const WRONG_PASSWORD: &str = "canary-wrong-password-Hk3v";
const WEBHOOK_TOKEN: &str = "canary-webhook-token-Zr8q";
const DRIFTED: &str = "canary-drifted-Vb5n";
const IN_SOPS: &str = "canary-in-sops-Wd6t";

fn forms(value: &str) -> Vec<String> {
    vec![
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
    ]
}

fn assert_clean(place: &str, text: &str) {
    for canary in [
        IN_GIT,
        IN_GIT_DATA,
        IN_REJECTED,
        WRONG_PASSWORD,
        WEBHOOK_TOKEN,
        DRIFTED,
        PASSWORD,
        IN_SOPS,
    ] {
        for form in forms(canary) {
            assert!(
                !text.contains(&form),
                "{place} contains a secret value ({canary}): {text}"
            );
        }
    }
}

fn secret_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  password: {value}\n"
    )
}

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cli(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubesync"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("kubesync");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn secret_values_reach_no_log_event_status_metric_or_output() {
    let ns = TestNamespace::new("sec").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("app.yaml", &configmap("app", "1"));
    repo.write("secret.yaml", &secret_yaml("db", IN_GIT));
    repo.write(
        "data-secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\ndata:\n  token: {}\n",
            base64::engine::general_purpose::STANDARD.encode(IN_GIT_DATA)
        ),
    );
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let git_url = daemon.url();
    let https = start_lighttpd(repo.root.path());
    let https_url = format!("https://127.0.0.1:{}/git/remote.git", https.port);
    let ca = https.dir.path().join("ca.pem");

    // Credentials and the webhook token, as users store them.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ns.client.clone(), &ns.name);
    for (name, data) in [
        (
            "https-wrong",
            json!({"username": USER, "password": WRONG_PASSWORD}),
        ),
        (
            "https-right",
            json!({"username": USER, "password": PASSWORD}),
        ),
        ("hook", json!({"token": WEBHOOK_TOKEN})),
    ] {
        let secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
    }

    let controller = ControllerProcess::start_with_env(&ns.name, &[], &[("SSL_CERT_FILE", &ca)]);
    let plain = create_gitsync(
        &ns,
        "plain",
        json!({"url": git_url, "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    create_gitsync(&ns, "wrong", json!({"url": https_url, "interval": "1h", "secretRef": {"name": "https-wrong"}, "targetNamespace": ns.name, "path": "app.yaml"})).await;
    // Into a namespace of its own: "plain" already holds app.yaml's ConfigMap here, and an object
    // has one owner.
    let elsewhere = TestNamespace::new("sec-right").await;
    create_gitsync(&ns, "right", json!({"url": https_url, "interval": "1h", "secretRef": {"name": "https-right"}, "path": "app.yaml", "targetNamespace": elsewhere.name})).await;
    let ready = |name: &'static str, want: &'static str| {
        let api = plain.clone();
        async move {
            eventually(
                Duration::from_secs(40),
                &format!("{name} Ready={want}"),
                || async {
                    let s = api.get(name).await.ok()?.status?;
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == want)
                        .then_some(())
                },
            )
            .await
        }
    };
    ready("plain", "True").await;
    ready("wrong", "False").await;
    ready("right", "True").await;
    assert_eq!(
        plain
            .get("plain")
            .await
            .expect("get")
            .status
            .expect("status")
            .last_applied_revision
            .as_deref(),
        Some(first.as_str())
    );

    // A failure with a secret in it: the server refuses a Secret (invalid sibling field).
    repo.write(
        "secret.yaml",
        &format!(
            "{}data:\n  broken: '%%% not base64 %%%'\n",
            secret_yaml("db", IN_REJECTED)
        ),
    );
    repo.commit_and_push("broken secret");
    // Drift on a Secret: changed in the cluster, corrected by the next sync.
    secrets
        .patch(
            "token",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": DRIFTED}})),
        )
        .await
        .expect("drift");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = sign_webhook(WEBHOOK_TOKEN.as_bytes(), body);
    let (status, _) = http(
        controller.port,
        "POST",
        &format!("/hooks/{}/plain", ns.name),
        &[("X-Hub-Signature-256", format!("sha256={signature}"))],
        body,
    );
    assert_eq!(status, 202);
    let (status, _) = http(
        controller.port,
        "POST",
        &format!("/hooks/{}/plain", ns.name),
        &[("X-Gitlab-Token", "not-it".into())],
        body,
    );
    assert_eq!(status, 401);
    ready("plain", "False").await;

    // The CLI on the same repository: sync (failing), diff and render, and a wrong password.
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mut outputs = vec![
        (
            "cli sync",
            cli(
                &[
                    "sync",
                    "--repo",
                    &git_url,
                    "--name",
                    "cli",
                    "-n",
                    &ns.name,
                    "--cache-dir",
                    &cache_arg,
                ],
                &[],
            ),
        ),
        (
            "cli sync -o json",
            cli(
                &[
                    "sync",
                    "--repo",
                    &git_url,
                    "--name",
                    "cli",
                    "-n",
                    &ns.name,
                    "--cache-dir",
                    &cache_arg,
                    "-o",
                    "json",
                ],
                &[],
            ),
        ),
        (
            "cli render",
            cli(
                &[
                    "render",
                    "--repo",
                    &git_url,
                    "--name",
                    "cli",
                    "-n",
                    &ns.name,
                    "--cache-dir",
                    &cache_arg,
                ],
                &[],
            ),
        ),
    ];
    // diff needs a valid source: the first commit's files, with the Secret changed in Git.
    let dir = work.path().join("dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("secret.yaml"),
        secret_yaml("db", "a-new-value-in-git"),
    )
    .expect("write");
    std::fs::write(dir.join("data-secret.yaml"), format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\nstringData:\n  token: {IN_GIT_DATA}\n")).expect("write");
    let dir_arg = dir.display().to_string();
    let diff = cli(
        &[
            "diff",
            "--repo",
            &dir_arg,
            "--gitsync",
            "--name",
            "plain",
            "-n",
            &ns.name,
            "--cache-dir",
            &cache_arg,
        ],
        &[],
    );
    assert!(
        diff.contains("*** (before)") || diff.contains("*** (after)"),
        "the diff shows masked changes: {diff}"
    );
    outputs.push(("cli diff", diff));
    let right_password = work.path().join("right");
    std::fs::write(&right_password, PASSWORD).expect("write");
    let password_file = work.path().join("pw");
    std::fs::write(&password_file, WRONG_PASSWORD).expect("write");
    let pw_arg = password_file.display().to_string();
    outputs.push((
        "cli wrong password",
        cli(
            &[
                "sync",
                "--repo",
                &https_url,
                "--name",
                "h",
                "-n",
                &ns.name,
                "--cache-dir",
                &cache_arg,
                "--username",
                USER,
                "--password-file",
                &pw_arg,
            ],
            &[("SSL_CERT_FILE", &ca)],
        ),
    ));
    // A namespace of its own: the GitSyncs above hold app.yaml's ConfigMap where they sync.
    let cli_ns = TestNamespace::new("sec-cli").await;
    outputs.push((
        "cli right password",
        cli(
            &[
                "sync",
                "--repo",
                &https_url,
                "--name",
                "h",
                "-n",
                &cli_ns.name,
                "--cache-dir",
                &cache_arg,
                "--username",
                USER,
                "--password-file",
                &right_password.display().to_string(),
                "--path",
                "app.yaml",
            ],
            &[("SSL_CERT_FILE", &ca)],
        ),
    ));

    assert!(
        !outputs[5].1.contains("FAILED"),
        "the right password works: {}",
        outputs[5].1
    );
    assert!(
        outputs[4].1.contains("FAILED"),
        "the wrong one does not: {}",
        outputs[4].1
    );

    // SOPS: a GitSync decrypts an encrypted Secret, then the file is damaged; the CLI renders it
    // with the key.
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let age = age_key(keys_dir.path(), "k");
    let plain_secret = keys_dir.path().join("plain.yaml");
    std::fs::write(&plain_secret, secret_yaml("sops-db", IN_SOPS)).expect("write");
    let encrypted = sops_encrypt(
        &plain_secret,
        &[&age],
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    let sops_repo = GitRepo::new();
    sops_repo.write("secret.enc.yaml", &encrypted);
    sops_repo.commit_and_push("encrypted");
    let sops_daemon = GitDaemon::start(sops_repo.root.path());
    let age_secret = serde_json::from_value(
        json!({"metadata": {"name": "age"}, "stringData": {"k.agekey": age.text}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &age_secret)
        .await
        .expect("age secret");
    let sops_url = sops_daemon.url();
    create_gitsync(
        &ns,
        "sops",
        json!({"url": sops_url, "interval": "1h",
        "decryption": {"provider": "sops", "secretRef": {"name": "age"}}}),
    )
    .await;
    ready("sops", "True").await;
    let marker = "password: ENC[AES256_GCM,data:";
    let at = encrypted.find(marker).expect("encrypted password") + marker.len();
    let mut damaged = encrypted.clone();
    let flipped = if &damaged[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    damaged.replace_range(at..at + 1, flipped);
    sops_repo.write("secret.enc.yaml", &damaged);
    sops_repo.commit_and_push("damaged");
    kubectl(&[
        "annotate",
        "--overwrite",
        "-n",
        &ns.name,
        "gitsync/sops",
        "kubesync.dev/requestedAt=damaged",
    ]);
    ready("sops", "False").await;
    let sops_dir = work.path().join("sops");
    std::fs::create_dir_all(&sops_dir).expect("mkdir");
    std::fs::write(sops_dir.join("secret.enc.yaml"), &encrypted).expect("write");
    let rendered = cli(
        &[
            "render",
            "--repo",
            &sops_dir.display().to_string(),
            "--name",
            "s",
            "-n",
            &ns.name,
            "--age-key-file",
            &age.file.display().to_string(),
        ],
        &[],
    );
    assert!(
        rendered.contains("password: '***'")
            || rendered.contains("password: \"***\"")
            || rendered.contains("password: ***"),
        "{rendered}"
    );
    outputs.push(("cli render of a SOPS file", rendered));

    // Now search every place.
    let gitsyncs: Api<GitSync> = Api::namespaced(ns.client.clone(), &ns.name);
    let status = serde_json::to_string(
        &gitsyncs
            .list(&Default::default())
            .await
            .expect("list")
            .items,
    )
    .expect("json");
    assert!(
        status.contains("secret/db"),
        "the failure is reported, by object: {status}"
    );
    assert_clean("GitSync objects and status", &status);
    assert_clean(
        "Events",
        &kubectl(&["get", "events", "-n", &ns.name, "-o", "yaml"]),
    );
    assert_clean("/metrics", &controller.get("/metrics").1);
    assert_clean("status page", &controller.get("/").1);
    for (place, text) in &outputs {
        assert_clean(place, text);
    }
    let log = controller.log_text();
    assert!(log.contains("sync finished"), "the log has content: {log}");
    assert_clean("controller log", &log);
}

/// The controller works with a read-only root filesystem and only its cache writable, as the
/// chart runs it: a private mount namespace remounts / read-only and mounts a tmpfs on the cache.
#[tokio::test]
async fn the_controller_writes_only_to_its_cache() {
    let ns = TestNamespace::new("ro").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    let commit = repo.commit_and_push("a");
    let daemon = GitDaemon::start(repo.root.path());
    let cache = tempfile::tempdir().expect("cache");
    let port = crate::support::git::free_port();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs {cache} && mount -o remount,bind,ro / && \
         touch /probe-ro 2>/dev/null && echo 'root is writable' >&2 && exit 3; \
         exec {bin} controller --watch-namespace {ns} --http-addr 127.0.0.1:{port} --cache-dir {cache}",
        cache = cache.path().display(),
        bin = env!("CARGO_BIN_EXE_kubesync"),
        ns = ns.name,
    );
    let mut child = Command::new("unshare")
        .args(["-m", "bash", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let api = create_gitsync(&ns, "ro", json!({"url": daemon.url(), "interval": "1h"})).await;
    let ready = tokio::time::timeout(
        Duration::from_secs(40),
        eventually(
            Duration::from_secs(40),
            "GitSync Ready on a read-only root",
            || async {
                let s = api.get("ro").await.ok()?.status?;
                (s.last_applied_revision.as_deref() == Some(commit.as_str())).then_some(())
            },
        ),
    )
    .await;
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(ready.is_ok(), "not Ready: {log}");
    assert!(
        !log.contains("root is writable"),
        "the root must be read-only in the test"
    );
    assert!(
        !log.to_lowercase().contains("read-only file system"),
        "{log}"
    );
}
