//! Notifications from the controller to local receivers that check each provider's documented
//! payload (generic with its HMAC signature, Slack, Discord, Matrix, ntfy, Gotify): every event a
//! real sync causes, deduplication, retries, a receiver that hangs, and no secret anywhere.
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubesync::crd::GitSync;
use serde_json::{Value, json};

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, sign_webhook, wait_for_revision,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::receiver::{Answer, Received, Receiver};
use crate::support::{TestNamespace, eventually};

const HMAC_KEY: &str = "generic-hmac-key-5e2a";
const PLANTED: &str = "planted-db-password-91c4";
const ALL_EVENTS: [&str; 7] = [
    "failed",
    "recovered",
    "applied",
    "pruneBlocked",
    "driftCorrected",
    "unhealthy",
    "stalled",
];

async fn secret(ns: &TestNamespace, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
            .expect("Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating a Secret");
}

/// The headline each event's title carries.
fn headline(event: &str) -> &'static str {
    match event {
        "failed" => "sync failed",
        "recovered" => "recovered",
        "applied" => "applied",
        "pruneBlocked" => "prune blocked",
        "driftCorrected" => "drift corrected",
        "unhealthy" => "unhealthy",
        "stalled" => "stalled",
        other => panic!("unknown event {other}"),
    }
}

/// Checks `r` against `provider`'s documented request; returns the event its title names.
fn check_shape(provider: &str, r: &Received, name: &str) -> String {
    let title_event = |title: &str| -> String {
        let prefix = format!("/{name}: ");
        let at = title
            .find(&prefix)
            .unwrap_or_else(|| panic!("{provider}: title {title:?}"));
        let words = &title[at + prefix.len()..];
        (ALL_EVENTS.iter())
            .find(|e| headline(e) == words)
            .unwrap_or_else(|| panic!("{provider}: no event in title {title:?}"))
            .to_string()
    };
    match provider {
        "generic" => {
            assert_eq!(r.method, "POST");
            let expected = format!("sha256={}", sign_webhook(HMAC_KEY.as_bytes(), &r.body));
            assert_eq!(
                r.header("x-kubesync-signature"),
                Some(expected.as_str()),
                "signature"
            );
            let b = r.json();
            assert_eq!(b["kind"], "Notification");
            assert_eq!(b["gitSync"]["name"], name);
            assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(["info", "warning", "error"].contains(&b["severity"].as_str().unwrap_or("")));
            assert_eq!(r.header("x-kubesync-event"), b["event"].as_str());
            b["event"].as_str().expect("event").to_string()
        }
        "slack" => {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/services/T0/B0/slack-path-secret")
            );
            let b = r.json();
            let text = b["text"].as_str().expect("text");
            assert!(text.len() <= 3000);
            assert_eq!(b["blocks"][0]["type"], "section");
            assert_eq!(b["blocks"][0]["text"]["type"], "mrkdwn");
            title_event(
                text.split(": ")
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(": ")
                    .as_str(),
            )
        }
        "discord" => {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/api/webhooks/1/discord-path-secret")
            );
            let b = r.json();
            let embed = &b["embeds"][0];
            let title = embed["title"].as_str().expect("title");
            assert!(title.chars().count() <= 256);
            assert!(
                embed["description"]
                    .as_str()
                    .expect("description")
                    .chars()
                    .count()
                    <= 4096
            );
            assert!(embed["color"].is_u64());
            for f in embed["fields"].as_array().expect("fields") {
                assert!(
                    f["name"].is_string()
                        && f["value"].as_str().expect("value").chars().count() <= 1024
                );
            }
            title_event(title)
        }
        "matrix" => {
            assert_eq!(r.method, "PUT");
            assert!(
                r.path
                    .starts_with("/_matrix/client/v3/rooms/%21ops%3Ahome.lan/send/m.room.message/"),
                "{}",
                r.path
            );
            assert_eq!(r.header("authorization"), Some("Bearer matrix-token-31"));
            let b = r.json();
            assert_eq!(b["msgtype"], "m.text");
            title_event(
                b["body"]
                    .as_str()
                    .expect("body")
                    .lines()
                    .next()
                    .unwrap_or(""),
            )
        }
        "ntfy" => {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/homelab-alerts")
            );
            assert_eq!(r.header("authorization"), Some("Bearer ntfy-token-77"));
            let priority: u8 = r
                .header("priority")
                .expect("priority")
                .parse()
                .expect("number");
            assert!((1..=5).contains(&priority));
            assert!(!r.text().is_empty());
            title_event(r.header("title").expect("title"))
        }
        "gotify" => {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/message"));
            assert_eq!(r.header("x-gotify-key"), Some("gotify-token-12"));
            let b = r.json();
            assert!(b["message"].is_string() && b["priority"].is_u64());
            title_event(b["title"].as_str().expect("title"))
        }
        other => panic!("unknown provider {other}"),
    }
}

/// The six receivers, their Secrets, and the GitSync's spec.notify naming them.
/// `events`: None for the default set. `answer`: how every receiver answers.
async fn receivers(
    ns: &TestNamespace,
    events: Option<&[&str]>,
    answer: Answer,
) -> (Vec<(&'static str, Receiver)>, Value) {
    let mut list = vec![];
    let mut notify = vec![];
    for provider in ["generic", "slack", "discord", "matrix", "ntfy", "gotify"] {
        let r = Receiver::start(answer.clone());
        let data = match provider {
            "generic" => json!({"address": r.url("/hook"), "hmacKey": HMAC_KEY}),
            "slack" => json!({"address": r.url("/services/T0/B0/slack-path-secret")}),
            "discord" => json!({"address": r.url("/api/webhooks/1/discord-path-secret")}),
            "matrix" => {
                json!({"address": r.url(""), "channel": "!ops:home.lan", "token": "matrix-token-31"})
            }
            "ntfy" => json!({"address": r.url("/homelab-alerts"), "token": "ntfy-token-77"}),
            _ => json!({"address": r.url(""), "token": "gotify-token-12"}),
        };
        secret(ns, &format!("to-{provider}"), data).await;
        let mut receiver =
            json!({"provider": provider, "secretRef": {"name": format!("to-{provider}")}});
        if let Some(events) = events {
            receiver["events"] = json!(events);
        }
        notify.push(receiver);
        list.push((provider, r));
    }
    (list, json!(notify))
}

/// Waits until the generic receiver got `event` as its `n`-th message (1-based) and every other
/// receiver as many; checks every request's shape; returns the events in order.
fn wait_for_event(receivers: &[(&str, Receiver)], n: usize, event: &str) -> Vec<String> {
    let within = Duration::from_secs(60);
    let mut events = vec![];
    for (provider, r) in receivers {
        let got = r.wait_for(n, within);
        assert_eq!(
            got.len(),
            n,
            "{provider}: {:?}",
            got.iter().map(Received::text).collect::<Vec<_>>()
        );
        let seen: Vec<String> = got
            .iter()
            .map(|g| check_shape(provider, g, "apps"))
            .collect();
        assert_eq!(
            seen.last().map(String::as_str),
            Some(event),
            "{provider}: {seen:?}"
        );
        if events.is_empty() {
            events = seen;
        } else {
            assert_eq!(
                seen, events,
                "{provider} got the same events as the generic receiver"
            );
        }
    }
    events
}

async fn patch_spec(api: &Api<GitSync>, spec: Value) {
    api.patch(
        "apps",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .expect("patching the GitSync");
}

fn failing_job() -> String {
    "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: nightly\nspec:\n  backoffLimit: 0\n  template:\n    \
     metadata:\n      annotations: {testbed.kubesync.dev/pod: fail}\n    spec:\n      restartPolicy: Never\n      \
     containers: [{name: c, image: nightly:1}]\n"
        .to_string()
}

#[tokio::test]
async fn every_provider_is_told_each_event_in_its_documented_shape_and_never_a_secret() {
    let ns = TestNamespace::new("notify").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("apps/settings.yaml", &configmap("settings", "1"));
    let db = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {PLANTED}}}\n"
    );
    repo.write("apps/db.yaml", &db);
    let first = repo.commit_and_push("settings and db: the first commit");
    let daemon = GitDaemon::start(repo.root.path());
    let (receivers, notify) = receivers(&ns, Some(&ALL_EVENTS), Answer::Statuses(vec![])).await;
    let controller = ControllerProcess::start(
        &ns.name,
        &["--status-page-url", "https://kubesync.home.lan/"],
    );
    let api = create_gitsync(
        &ns,
        "apps",
        json!({"url": daemon.url(), "path": "apps", "interval": "2s", "notify": notify}),
    )
    .await;
    wait_for_revision(&api, "apps", &first, Duration::from_secs(60)).await;
    wait_for_event(&receivers, 1, "applied");
    let generic = &receivers[0].1;
    let body = generic.all()[0].json();
    assert_eq!(
        body["commit"]["subject"],
        "settings and db: the first commit"
    );
    assert_eq!(body["summary"]["created"], 2);
    assert_eq!(body["revision"], first.as_str());
    assert_eq!(body["url"], "https://kubesync.home.lan/");

    // Changed in the cluster: put back, and said.
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let edit = json!({"data": {"key": "by hand"}});
    configmaps
        .patch("settings", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    wait_for_event(&receivers, 2, "driftCorrected");

    // A manifest that does not parse: stalled until Git changes.
    repo.write("apps/broken.yaml", "kind: ConfigMap\nmetadata: [\n");
    repo.commit_and_push("broken");
    wait_for_event(&receivers, 3, "stalled");
    repo.remove("apps/broken.yaml");
    repo.write("apps/settings.yaml", &configmap("settings", "2"));
    repo.commit_and_push("fixed");
    let events = wait_for_event(&receivers, 5, "applied");
    assert_eq!(events[3], "recovered");

    // The repository cannot be reached: failed, then recovered when it can.
    patch_spec(&api, json!({"url": "git://127.0.0.1:1/nowhere"})).await;
    wait_for_event(&receivers, 6, "failed");
    patch_spec(&api, json!({"url": daemon.url()})).await;
    wait_for_event(&receivers, 7, "recovered");

    // Git holds nothing: the prune guard stops, and says so.
    repo.remove("apps/settings.yaml");
    repo.remove("apps/db.yaml");
    repo.write("apps/README.md", "nothing here\n");
    repo.commit_and_push("empty");
    wait_for_event(&receivers, 8, "pruneBlocked");
    repo.write("apps/settings.yaml", &configmap("settings", "2"));
    repo.write("apps/db.yaml", &db);
    repo.write("apps/nightly.yaml", &failing_job());
    repo.commit_and_push("back, with a Job that fails");
    // Recovered and applied at once; then the Job fails (read again between syncs).
    let events = wait_for_event(&receivers, 11, "unhealthy");
    assert_eq!(&events[8..10], ["recovered", "applied"]);

    // No secret value in any request body or header, and none in the log; receivers' tokens only
    // in their own header.
    let log = controller.log_text();
    for (provider, r) in &receivers {
        for got in r.all() {
            let text = format!("{:?} {}", got.headers, got.text());
            assert!(!text.contains(PLANTED), "{provider}: {text}");
            assert!(
                !got.text().contains(HMAC_KEY) && !got.text().contains("token-"),
                "{provider}"
            );
        }
    }
    for secret in [
        PLANTED,
        HMAC_KEY,
        "slack-path-secret",
        "discord-path-secret",
        "matrix-token-31",
        "ntfy-token-77",
        "gotify-token-12",
    ] {
        assert!(!log.contains(secret), "{secret} in the controller's log");
    }
    let sent = controller.metric(
        "kubesync_notifications_total{provider=\"discord\",event=\"applied\",result=\"sent\"}",
    );
    assert_eq!(sent, 3.0);
}

#[tokio::test]
async fn ten_failing_syncs_are_one_message_and_one_recovery_and_a_500_is_retried() {
    let ns = TestNamespace::new("notify-dedup").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("apps/settings.yaml", &configmap("settings", "1"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    // Every receiver answers its first request with a 500; the retry gets through.
    let (receivers, notify) = receivers(&ns, None, Answer::Statuses(vec![500])).await;
    let controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "apps",
        json!({"url": daemon.url(), "path": "apps", "interval": "1h", "notify": notify}),
    )
    .await;
    wait_for_revision(&api, "apps", &first, Duration::from_secs(60)).await;
    patch_spec(&api, json!({"url": "git://127.0.0.1:1/nowhere"})).await;
    for n in 1..=10 {
        let at = format!("attempt-{n}");
        let request = json!({"metadata": {"annotations": {"kubesync.dev/requestedAt": at}}});
        api.patch("apps", &PatchParams::default(), &Patch::Merge(&request))
            .await
            .expect("request");
        eventually(
            Duration::from_secs(30),
            &format!("sync {at} handled"),
            || async {
                let s = api.get("apps").await.ok()?.status?;
                (s.last_handled_requested_at.as_deref() == Some(at.as_str())
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "False"))
                .then_some(())
            },
        )
        .await;
    }
    patch_spec(&api, json!({"url": daemon.url()})).await;
    for (_, r) in &receivers {
        r.wait_for(3, Duration::from_secs(30));
    }
    // Give a straggler the time to arrive before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (provider, r) in &receivers {
        let got = r.all();
        let events: Vec<String> = got
            .iter()
            .map(|g| check_shape(provider, g, "apps"))
            .collect();
        assert_eq!(
            events,
            ["failed", "failed", "recovered"],
            "{provider}: the failure once (sent twice: a 500 first), then the recovery"
        );
        assert_eq!(
            got[0].body, got[1].body,
            "{provider}: the retry is the same message"
        );
        assert!(
            got[1].at.duration_since(got[0].at) >= Duration::from_millis(900),
            "{provider}: retried after a backoff"
        );
        assert_eq!(r.answered(), 3);
        let metric = |event: &str| {
            controller.metric(&format!(
                "kubesync_notifications_total{{provider=\"{provider}\",event=\"{event}\",result=\"sent\"}}"
            ))
        };
        assert_eq!(
            (metric("failed"), metric("recovered")),
            (1.0, 1.0),
            "{provider}"
        );
        let retries = format!("kubesync_notification_retries_total{{receiver=\"{provider}\"}}");
        assert_eq!(controller.metric(&retries), 1.0, "{provider}");
    }
}

#[tokio::test]
async fn a_receiver_that_hangs_delays_no_sync_and_no_other_receiver() {
    let ns = TestNamespace::new("notify-hang").await;
    install_crd(&ns.client).await;
    let repo = GitRepo::new();
    repo.write("apps/settings.yaml", &configmap("settings", "0"));
    let mut revision = repo.commit_and_push("0");
    let daemon = GitDaemon::start(repo.root.path());
    // One hanging receiver per provider, and one that answers.
    let (hanging, mut notify) = receivers(&ns, Some(&["applied"]), Answer::Hang).await;
    let prompt = Receiver::start(Answer::Statuses(vec![]));
    secret(&ns, "prompt", json!({"address": prompt.url("/topic")})).await;
    (notify.as_array_mut().expect("list"))
        .push(json!({"provider": "ntfy", "secretRef": {"name": "prompt"}, "events": ["applied"]}));
    let _controller = ControllerProcess::start(&ns.name, &[]);
    let api = create_gitsync(
        &ns,
        "apps",
        json!({"url": daemon.url(), "path": "apps", "interval": "1s", "notify": notify}),
    )
    .await;
    wait_for_revision(&api, "apps", &revision, Duration::from_secs(60)).await;
    for n in 1..=3 {
        repo.write("apps/settings.yaml", &configmap("settings", &n.to_string()));
        revision = repo.commit_and_push(&n.to_string());
        // Each commit is applied at the next interval, as if no receiver hung.
        let took = wait_for_revision(&api, "apps", &revision, Duration::from_secs(60)).await;
        assert!(
            took < Duration::from_secs(8),
            "commit {n} applied after {took:?}"
        );
        let got = prompt.wait_for(n + 1, Duration::from_secs(5));
        assert!(got.last().is_some_and(|r| r.text().contains("applied")));
    }
    for (provider, r) in &hanging {
        assert_eq!(
            r.all().len(),
            1,
            "{provider} holds its first message (10 s timeout)"
        );
    }
    let history = api
        .get("apps")
        .await
        .expect("GitSync")
        .status
        .expect("status")
        .history;
    assert!(
        history.iter().all(|h| h.duration_seconds < 5.0),
        "{history:?}"
    );
}
