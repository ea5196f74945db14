//! Commit status on a real forge: Gitea built from its Go module, on loopback with SQLite. A
//! user, a token and a repository are made through Gitea's API; the manifests are pushed to it;
//! Gitea's own push webhook calls kubesync's `/hooks`; kubesync syncs the commit and posts its
//! status, which the test reads back through Gitea's API.
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, wait_for_revision,
};
use crate::support::gitea::{ForgeUser, Gitea};
use crate::support::manifests::configmap;
use crate::support::{TestNamespace, eventually, run};

fn git(dir: &Path, args: &[&str]) -> String {
    run(std::process::Command::new("git")
        .args([
            "-c",
            "user.name=Hanako Yamada",
            "-c",
            "user.email=hanako@forge.test",
        ])
        .args(args)
        .current_dir(dir))
    .trim()
    .to_string()
}

/// Commits everything in `dir` and pushes it to the forge; returns the commit id.
fn push(dir: &Path, remote: &str, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["push", "-q", remote, "main"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Waits until the newest status of `commit` under `context` is not pending; returns it and
/// every status of the commit.
async fn final_status(
    forge: &Gitea,
    user: &ForgeUser,
    commit: &str,
    context: &str,
    within: Duration,
) -> (Value, Vec<Value>) {
    eventually(within, &format!("a final status on {commit}"), || async {
        let all = forge.statuses(user, "homelab", commit);
        let newest = (all.iter())
            .filter(|s| s["context"] == context)
            .max_by_key(|s| s["id"].as_i64().unwrap_or(0))?
            .clone();
        (newest["status"] != "pending").then_some((newest, all))
    })
    .await
}

#[tokio::test]
async fn a_push_to_gitea_is_synced_by_its_webhook_and_the_commit_gets_its_status() {
    let ns = TestNamespace::new("forge").await;
    install_crd(&ns.client).await;
    let forge = Gitea::start();
    let user = forge.create_user("hanako");
    let url = forge.create_repo(&user, "homelab");
    let remote = url.replace("http://", &format!("http://{}:{}@", user.name, user.token));
    let work = tempfile::tempdir().expect("tempdir");
    git(work.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.path().join("apps")).expect("dir");
    std::fs::write(
        work.path().join("apps/settings.yaml"),
        configmap("settings", "1"),
    )
    .expect("write");
    let first = push(work.path(), &remote, "settings: 1");

    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let webhook_token = "forge-webhook-token-7d1f";
    for (name, key, value) in [
        ("forge-token", "token", user.token.as_str()),
        ("hook", "token", webhook_token),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {key: value}
        }))
        .expect("Secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("Secret");
    }
    let status_page = "https://kubesync.home.lan/";
    let controller = ControllerProcess::start(&ns.name, &["--status-page-url", status_page]);
    // A long interval: only the webhook makes a new commit sync quickly.
    let api = create_gitsync(
        &ns,
        "homelab",
        json!({"url": url, "path": "apps", "interval": "1h",
               "webhookSecretRef": {"name": "hook"},
               "commitStatus": {"secretRef": {"name": "forge-token"}}}),
    )
    .await;
    wait_for_revision(&api, "homelab", &first, Duration::from_secs(60)).await;
    let context = format!("kubesync/{}/homelab", ns.name);
    let (status, all) =
        final_status(&forge, &user, &first, &context, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "success", "{all:?}");
    assert_eq!(status["target_url"], status_page);
    let description = status["description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with("applied: 1 created"),
        "{description}"
    );
    assert!(
        all.iter()
            .any(|s| s["status"] == "pending" && s["context"] == context.as_str()),
        "a pending status before the result: {all:?}"
    );

    // Gitea's own webhook, to kubesync's endpoint, signed with the shared token.
    let hook = json!({"type": "gitea", "active": true, "events": ["push"],
        "config": {"url": format!("http://127.0.0.1:{}/hooks/{}/homelab", controller.port, ns.name),
                   "content_type": "json", "secret": webhook_token}});
    let (code, body) = forge.api(
        "POST",
        &format!("/repos/{}/homelab/hooks", user.name),
        Some(&format!("token {}", user.token)),
        Some(hook),
    );
    assert_eq!(code, 201, "creating the webhook: {body}");

    let mut took = vec![];
    for n in 2..=4 {
        std::fs::write(
            work.path().join("apps/settings.yaml"),
            configmap("settings", &n.to_string()),
        )
        .expect("write");
        let started = Instant::now();
        let commit = push(work.path(), &remote, &format!("settings: {n}"));
        let pushed = Instant::now();
        let (status, all) =
            final_status(&forge, &user, &commit, &context, Duration::from_secs(30)).await;
        took.push((pushed.elapsed(), pushed - started));
        assert_eq!(status["status"], "success", "{all:?}");
        assert!(
            status["description"]
                .as_str()
                .unwrap_or_default()
                .contains("1 configured")
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
        let data = configmaps
            .get("settings")
            .await
            .expect("ConfigMap")
            .data
            .unwrap_or_default();
        assert_eq!(
            data.get("key").map(String::as_str),
            Some(n.to_string().as_str())
        );
    }
    took.sort();
    eprintln!(
        "git push returned → Gitea webhook → applied → commit status success (and the push itself): {took:?}"
    );

    // A broken commit: failure, naming the file, and nothing applied.
    std::fs::write(
        work.path().join("apps/broken.yaml"),
        "kind: ConfigMap\nmetadata: [\n",
    )
    .expect("write");
    let broken = push(work.path(), &remote, "a broken manifest");
    let (status, all) =
        final_status(&forge, &user, &broken, &context, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "failure", "{all:?}");
    let description = status["description"].as_str().unwrap_or_default();
    assert!(description.contains("broken.yaml"), "{description}");
    assert!(
        !controller.log_text().contains(&user.token),
        "the forge token is never logged"
    );
}
