//! The request each provider documents, built from a [`Notification`]: no I/O, so every shape is
//! unit-tested and the integration test's receiver checks the same schemas from the outside.
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use super::event::{EventKind, Severity};
use super::message::{Notification, short_revision, truncated};

/// A chat or push service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// JSON POST of the whole notification; `X-Kubesync-Signature: sha256=<hex HMAC>` when the
    /// Secret has `hmacKey`.
    Generic,
    /// Slack incoming webhook.
    Slack,
    /// Discord webhook (an embed).
    Discord,
    /// Matrix: `m.room.message` into the room `channel`, with an access `token`.
    Matrix,
    /// ntfy: a POST to the topic's URL, title and priority in headers.
    Ntfy,
    /// Gotify: `/message` with an application `token`.
    Gotify,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Generic,
        Provider::Slack,
        Provider::Discord,
        Provider::Matrix,
        Provider::Ntfy,
        Provider::Gotify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Generic => "generic",
            Provider::Slack => "slack",
            Provider::Discord => "discord",
            Provider::Matrix => "matrix",
            Provider::Ntfy => "ntfy",
            Provider::Gotify => "gotify",
        }
    }

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A receiver: a provider, where it is, and its credentials (all read from a Secret). Its Debug
/// form shows only the provider and host: webhook URLs carry their own secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: Provider,
    /// Webhook URL (generic, Slack, Discord), topic URL (ntfy), server URL (Matrix, Gotify).
    pub address: String,
    /// Bearer or application token (Matrix, ntfy, Gotify).
    pub token: Option<String>,
    /// Matrix room id.
    pub channel: Option<String>,
    /// Generic webhook: the key of the HMAC-SHA256 signature.
    pub hmac_key: Option<String>,
    pub events: Vec<EventKind>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}",
            self.provider.as_str(),
            endpoint(&self.address)
        )
    }
}

impl Target {
    pub fn wants(&self, event: EventKind) -> bool {
        self.events.contains(&event)
    }

    /// Identifies the receiver's queue (never shown).
    pub fn queue_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.provider.as_str(),
            self.address,
            self.channel.as_deref().unwrap_or_default()
        )
    }
}

/// `scheme://host[:port]` of a URL: what may be logged of an address.
pub fn endpoint(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}")
        }
        None => "(not a URL)".into(),
    }
}

/// An HTTP request, ready to send. Its Debug form shows the method and host only: the URL's path,
/// the headers and the body may hold a receiver's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, endpoint(&self.url))
    }
}

impl Request {
    fn json(method: &'static str, url: String, body: &serde_json::Value) -> Request {
        Request {
            method,
            url,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("{provider} needs the Secret key {key}")]
    Missing {
        provider: &'static str,
        key: &'static str,
    },
    #[error("{provider}: address must be an http:// or https:// URL")]
    Address { provider: &'static str },
}

/// The request that tells `target` about `n`. `sequence` makes Matrix's transaction id unique.
pub fn request(target: &Target, n: &Notification, sequence: u64) -> Result<Request, PayloadError> {
    let provider = target.provider.as_str();
    if !(target.address.starts_with("https://") || target.address.starts_with("http://")) {
        return Err(PayloadError::Address { provider });
    }
    let need = |value: &Option<String>, key| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or(PayloadError::Missing { provider, key })
    };
    Ok(match target.provider {
        Provider::Generic => generic(target, n),
        Provider::Slack => Request::json("POST", target.address.clone(), &slack(n)),
        Provider::Discord => Request::json("POST", target.address.clone(), &discord(n)),
        Provider::Matrix => {
            let room = need(&target.channel, "channel")?;
            let token = need(&target.token, "token")?;
            let url = format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/kubesync-{}-{sequence}",
                target.address.trim_end_matches('/'),
                percent_encode(&room),
                n.time.replace([':', '-', '.'], "")
            );
            let mut request = Request::json("PUT", url, &matrix(n));
            request
                .headers
                .push(("authorization", format!("Bearer {token}")));
            request
        }
        Provider::Ntfy => ntfy(target, n),
        Provider::Gotify => {
            let token = need(&target.token, "token")?;
            let url = format!("{}/message", target.address.trim_end_matches('/'));
            let mut request = Request::json("POST", url, &gotify(n));
            request.headers.push(("x-gotify-key", token));
            request
        }
    })
}

/// The generic webhook's body: the notification as JSON, versioned.
pub fn generic_body(n: &Notification) -> serde_json::Value {
    json!({
        "apiVersion": "kubesync.dev/v1",
        "kind": "Notification",
        "gitSync": {"namespace": n.namespace, "name": n.name},
        "event": n.event,
        "severity": n.event.severity(),
        "revision": n.revision,
        "message": n.message,
        "summary": n.summary,
        "commit": n.commit,
        "url": n.url,
        "time": n.time,
    })
}

fn generic(target: &Target, n: &Notification) -> Request {
    let mut request = Request::json("POST", target.address.clone(), &generic_body(n));
    request
        .headers
        .push(("x-kubesync-event", n.event.as_str().into()));
    if let Some(key) = target.hmac_key.as_deref().filter(|k| !k.is_empty()) {
        let signature = sign(key.as_bytes(), &request.body);
        request
            .headers
            .push(("x-kubesync-signature", format!("sha256={signature}")));
    }
    request
}

/// Hex HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn icon(n: &Notification) -> &'static str {
    match n.event.severity() {
        Severity::Error => "❌",
        Severity::Warning => "⚠️",
        Severity::Info => match n.event {
            EventKind::Recovered => "✅",
            _ => "ℹ️",
        },
    }
}

/// Slack: `text` (shown in notifications and as the fallback) and one section block.
fn slack(n: &Notification) -> serde_json::Value {
    let title = format!("{} {}", icon(n), n.title());
    let mut body = format!("*{title}*\n{}", truncated(&n.text(), 2800));
    if let Some(url) = &n.url {
        body.push_str(&format!("\n<{url}|status page>"));
    }
    json!({
        "text": truncated(&format!("{title}: {}", n.message), 3000),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}],
    })
}

/// Discord: one embed, within Discord's limits (title 256, description 4096, field 1024).
fn discord(n: &Notification) -> serde_json::Value {
    let color = match n.event.severity() {
        Severity::Error => 0xd7_3a49,
        Severity::Warning => 0xe3_b341,
        Severity::Info => 0x2e_a043,
    };
    let mut fields = vec![];
    if let Some(revision) = &n.revision {
        fields.push(json!({"name": "Revision", "value": short_revision(revision), "inline": true}));
    }
    if let Some(c) = &n.commit {
        let commit = truncated(&format!("{} ({})", c.subject, c.author), 1024);
        fields.push(json!({"name": "Commit", "value": commit, "inline": true}));
    }
    if let Some(s) = &n.summary {
        let counts = format!(
            "{} created, {} configured, {} pruned, {} unchanged",
            s.created, s.configured, s.pruned, s.unchanged
        );
        fields.push(json!({"name": "Changes", "value": counts, "inline": false}));
    }
    let mut embed = json!({
        "title": truncated(&format!("{} {}", icon(n), n.title()), 256),
        "description": truncated(&n.message, 4096),
        "color": color,
        "fields": fields,
        "timestamp": n.time,
    });
    if let Some(url) = &n.url {
        embed["url"] = json!(url);
    }
    json!({"username": "kubesync", "embeds": [embed]})
}

fn matrix(n: &Notification) -> serde_json::Value {
    let text = format!("{} {}\n{}", icon(n), n.title(), n.text());
    json!({"msgtype": "m.text", "body": truncated(&text, 16_000)})
}

fn priority(event: EventKind) -> (u8, u8, &'static str) {
    // (ntfy 1–5, Gotify 0–10, ntfy tag)
    match event.severity() {
        Severity::Error => (4, 8, "rotating_light"),
        Severity::Warning => (3, 5, "warning"),
        Severity::Info if event == EventKind::Recovered => (3, 4, "white_check_mark"),
        Severity::Info => (2, 2, "arrows_counterclockwise"),
    }
}

/// ntfy: the message as the body; title, priority, tags and click in headers (ASCII only: the
/// title is names and fixed words).
fn ntfy(target: &Target, n: &Notification) -> Request {
    let (priority, _, tag) = priority(n.event);
    let mut request = Request {
        method: "POST",
        url: target.address.clone(),
        headers: vec![
            ("content-type", "text/plain; charset=utf-8".into()),
            ("title", n.title().replace(|c: char| !c.is_ascii(), "?")),
            ("priority", priority.to_string()),
            ("tags", format!("{tag},kubesync")),
        ],
        body: truncated(&n.text(), 4000).into_bytes(),
    };
    if let Some(url) = &n.url {
        request.headers.push(("click", url.clone()));
    }
    if let Some(token) = target.token.as_deref().filter(|t| !t.is_empty()) {
        request
            .headers
            .push(("authorization", format!("Bearer {token}")));
    }
    request
}

fn gotify(n: &Notification) -> serde_json::Value {
    let (_, priority, _) = priority(n.event);
    let mut body = json!({
        "title": n.title(),
        "message": truncated(&n.text(), 8000),
        "priority": priority,
        "extras": {"client::display": {"contentType": "text/plain"}},
    });
    if let Some(url) = &n.url {
        body["extras"]["client::notification"] = json!({"click": {"url": url}});
    }
    body
}

/// Percent-encodes everything but unreserved characters (a path segment).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::sample;

    fn target(provider: Provider) -> Target {
        Target {
            provider,
            address: "https://hooks.example/services/T0/B0/sEcReT".into(),
            token: Some("tok-123".into()),
            channel: Some("!room:example.org".into()),
            hmac_key: Some("k3y".into()),
            events: EventKind::DEFAULT.to_vec(),
        }
    }

    fn body(r: &Request) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn generic_is_the_whole_notification_signed() {
        let r = request(&target(Provider::Generic), &sample(), 1).unwrap();
        assert_eq!(r.method, "POST");
        let b = body(&r);
        assert_eq!(b["kind"], "Notification");
        assert_eq!(b["gitSync"]["name"], "apps");
        assert_eq!(b["event"], "applied");
        assert_eq!(b["severity"], "info");
        assert_eq!(b["summary"]["pruned"], 1);
        assert_eq!(b["commit"]["author"], "Hanako Yamada");
        let expected = format!("sha256={}", sign(b"k3y", &r.body));
        assert_eq!(r.header("X-Kubesync-Signature"), Some(expected.as_str()));
        assert_eq!(r.header("x-kubesync-event"), Some("applied"));
        // RFC 4231 test case 2, so the signature is checked against HMAC itself.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let unsigned = Target {
            hmac_key: None,
            ..target(Provider::Generic)
        };
        let r = request(&unsigned, &sample(), 1).unwrap();
        assert_eq!(r.header("x-kubesync-signature"), None);
    }

    #[test]
    fn slack_and_discord_follow_their_documented_shapes() {
        let r = request(&target(Provider::Slack), &sample(), 1).unwrap();
        let b = body(&r);
        assert!(
            b["text"]
                .as_str()
                .unwrap()
                .contains("homelab/apps: applied")
        );
        assert_eq!(b["blocks"][0]["type"], "section");
        assert_eq!(b["blocks"][0]["text"]["type"], "mrkdwn");
        assert!(
            b["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("<https://kubesync.home.example/|status page>")
        );

        let r = request(&target(Provider::Discord), &sample(), 1).unwrap();
        let b = body(&r);
        let embed = &b["embeds"][0];
        assert!(
            embed["title"]
                .as_str()
                .unwrap()
                .ends_with("homelab/apps: applied")
        );
        assert_eq!(embed["color"], 0x2e_a043);
        assert_eq!(embed["fields"][0]["value"], "0123456789ab");
        assert_eq!(embed["url"], "https://kubesync.home.example/");
    }

    #[test]
    fn matrix_ntfy_and_gotify_carry_their_tokens_where_documented() {
        let r = request(&target(Provider::Matrix), &sample(), 7).unwrap();
        assert_eq!(r.method, "PUT");
        assert!(r.url.starts_with(
            "https://hooks.example/services/T0/B0/sEcReT/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/kubesync-"
        ), "{}", r.url);
        assert!(r.url.ends_with("-7"));
        assert_eq!(r.header("authorization"), Some("Bearer tok-123"));
        assert_eq!(body(&r)["msgtype"], "m.text");

        let r = request(&target(Provider::Ntfy), &sample(), 1).unwrap();
        assert_eq!(r.header("title"), Some("homelab/apps: applied"));
        assert_eq!(r.header("priority"), Some("2"));
        assert_eq!(r.header("click"), Some("https://kubesync.home.example/"));
        assert!(
            String::from_utf8(r.body.clone())
                .unwrap()
                .contains("rails: 3 replicas")
        );

        let r = request(&target(Provider::Gotify), &sample(), 1).unwrap();
        assert!(r.url.ends_with("/sEcReT/message"));
        assert_eq!(r.header("x-gotify-key"), Some("tok-123"));
        assert_eq!(body(&r)["priority"], 2);
    }

    #[test]
    fn every_provider_builds_a_request_naming_every_event() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
            for event in EventKind::ALL {
                let n = Notification { event, ..sample() };
                let r = request(&target(provider), &n, 1).unwrap();
                let text = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
                let named = match provider {
                    Provider::Generic => {
                        text.contains(&format!("\"event\":\"{}\"", event.as_str()))
                    }
                    _ => text.contains(&format!("homelab/apps: {}", event.headline())),
                };
                assert!(named, "{provider:?} {event:?}: {text}");
                if provider != Provider::Ntfy {
                    serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
                }
            }
        }
    }

    #[test]
    fn missing_keys_and_bad_addresses_are_named() {
        let no_room = Target {
            channel: None,
            ..target(Provider::Matrix)
        };
        assert_eq!(
            request(&no_room, &sample(), 1).unwrap_err().to_string(),
            "matrix needs the Secret key channel"
        );
        let not_url = Target {
            address: "hooks.example/x".into(),
            ..target(Provider::Slack)
        };
        assert!(request(&not_url, &sample(), 1).is_err());
    }

    #[test]
    fn debug_and_endpoint_hide_paths_and_credentials() {
        let t = target(Provider::Discord);
        assert_eq!(format!("{t:?}"), "discord at https://hooks.example");
        let r = request(&target(Provider::Gotify), &sample(), 1).unwrap();
        assert_eq!(format!("{r:?}"), "POST https://hooks.example");
        assert_eq!(
            endpoint("https://user:pw@ntfy.home:8443/topic?x"),
            "https://ntfy.home:8443"
        );
    }
}
