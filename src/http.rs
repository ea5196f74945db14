//! The controller's one HTTP listener: `/metrics`, `/healthz`, `/readyz`, the status page `/`, and
//! push webhooks at `/hooks/<namespace>/<name>`.
//!
//! A webhook is verified against the GitSync's `webhookSecretRef` (key `token`) in constant time.
//! A valid one sets `kubesync.dev/requestedAt` on the GitSync, which the leading replica watches, so
//! any replica can take the request.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::crd::{GitSync, REQUESTED_AT_ANNOTATION};
use crate::metrics::Metrics;

/// Largest webhook body read (GitHub caps payloads at 25 MB but pushes are far smaller).
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

/// What `/readyz` reports: ready once the GitSync API answered and leadership is known, and
/// unready again while shutting down.
#[derive(Debug, Default)]
pub struct Readiness {
    pub api_reachable: AtomicBool,
    pub leadership_known: AtomicBool,
    pub leader: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.api_reachable.load(Ordering::Relaxed)
            && self.leadership_known.load(Ordering::Relaxed)
            && !self.shutting_down.load(Ordering::Relaxed)
    }
}

/// A token bucket: `capacity` requests at once, refilled at `per_second`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, per_second: f64) -> Bucket {
        Bucket {
            tokens: capacity,
            capacity,
            per_second,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct HttpState {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Only GitSyncs of this namespace are shown and accept webhooks (None: all).
    pub namespace: Option<String>,
    webhooks: Mutex<Bucket>,
    /// Last trigger per GitSync: pushes within a second are coalesced into one sync.
    triggered: Mutex<HashMap<String, Instant>>,
}

impl HttpState {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        namespace: Option<String>,
    ) -> HttpState {
        HttpState {
            client,
            metrics,
            readiness,
            namespace,
            webhooks: Mutex::new(Bucket::new(20.0, 5.0)),
            triggered: Mutex::new(HashMap::new()),
        }
    }
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/hooks/{namespace}/{name}", post(webhook))
        .with_state(state)
}

/// Serves on an already bound listener (so a bad address fails at start-up) until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.readiness.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Which signature a sender used.
#[derive(Debug, PartialEq, Eq)]
enum Signature {
    /// `X-Hub-Signature-256: sha256=<hex>` (GitHub, and any HMAC-SHA256 sender).
    HubSha256(Vec<u8>),
    /// `X-Gitea-Signature: <hex>` (Gitea, Forgejo).
    Gitea(Vec<u8>),
    /// `X-Gitlab-Token: <token>` (GitLab sends the shared token itself).
    GitlabToken(Vec<u8>),
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn signature(headers: &HeaderMap) -> Option<Signature> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(v) = text("x-hub-signature-256") {
        return hex_decode(v.strip_prefix("sha256=")?).map(Signature::HubSha256);
    }
    if let Some(v) = text("x-gitea-signature").or_else(|| text("x-forgejo-signature")) {
        return hex_decode(v).map(Signature::Gitea);
    }
    headers
        .get("x-gitlab-token")
        .map(|v| Signature::GitlabToken(v.as_bytes().to_vec()))
}

/// Whether `signature` proves the sender knows `token`. Every comparison is constant-time.
fn verify(signature: &Signature, body: &[u8], token: &[u8]) -> bool {
    let hmac_matches = |expected: &[u8]| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(expected).is_ok()
    };
    match signature {
        Signature::HubSha256(s) | Signature::Gitea(s) => hmac_matches(s),
        Signature::GitlabToken(given) => {
            // Compare digests, so neither length nor content leaks through timing.
            let a = Sha256::digest(given);
            let b = Sha256::digest(token);
            a.iter()
                .zip(b.iter())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
        }
    }
}

async fn webhook(
    State(state): State<Arc<HttpState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let unauthorized = || (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    if !state
        .webhooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return (StatusCode::TOO_MANY_REQUESTS, "too many requests\n").into_response();
    }
    let Ok(body) = to_bytes(body, WEBHOOK_BODY_LIMIT).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n").into_response();
    };
    let Some(signature) = signature(&headers) else {
        return unauthorized();
    };
    if state.namespace.as_ref().is_some_and(|ns| *ns != namespace) {
        return unauthorized();
    }
    let syncs: Api<GitSync> = Api::namespaced(state.client.clone(), &namespace);
    // An unknown GitSync, one without a webhook secret and a bad signature all look the same.
    let Ok(Some(sync)) = syncs.get_opt(&name).await else {
        return unauthorized();
    };
    let Some(secret_ref) = &sync.spec.webhook_secret_ref else {
        return unauthorized();
    };
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &namespace);
    let token = match secrets.get_opt(&secret_ref.name).await {
        Ok(Some(secret)) => secret
            .data
            .unwrap_or_default()
            .get("token")
            .map(|t| t.0.clone()),
        _ => None,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        warn!(sync = %format!("{namespace}/{name}"), "webhook secret missing or without key token");
        return unauthorized();
    };
    if !verify(&signature, &body, &token) {
        warn!(sync = %format!("{namespace}/{name}"), "webhook with a bad signature refused");
        return unauthorized();
    }
    let key = format!("{namespace}/{name}");
    {
        let mut triggered = state.triggered.lock().unwrap_or_else(|p| p.into_inner());
        if triggered
            .get(&key)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return (StatusCode::ACCEPTED, "sync already requested\n").into_response();
        }
        triggered.insert(key.clone(), Instant::now());
    }
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}});
    match syncs
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(sync = %key, "webhook: sync requested");
            (StatusCode::ACCEPTED, "sync requested\n").into_response()
        }
        Err(e) => {
            warn!(sync = %key, error = %crate::kube_ext::kube_message(&e), "webhook: requesting a sync");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not request a sync\n",
            )
                .into_response()
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn status_page(State(state): State<Arc<HttpState>>) -> Response {
    let api: Api<GitSync> = match &state.namespace {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    };
    let listed =
        tokio::time::timeout(Duration::from_secs(10), api.list(&ListParams::default())).await;
    let (syncs, problem) = match listed {
        Ok(Ok(list)) => (list.items, None),
        Ok(Err(e)) => (Vec::new(), Some(crate::kube_ext::kube_message(&e))),
        Err(_) => (
            Vec::new(),
            Some("the API server did not answer in 10 s".into()),
        ),
    };
    let html = render_status_page(&syncs, problem.as_deref());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn when(t: &k8s_openapi::jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The status page: one card per GitSync. Server-rendered, no scripts, refreshes itself.
pub fn render_status_page(syncs: &[GitSync], problem: Option<&str>) -> String {
    let mut html = String::from(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<meta http-equiv=\"refresh\" content=\"10\"><title>kubesync</title><style>",
        ":root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--wait:#9a6700;--mute:#6e7781}",
        "body{font:15px/1.45 system-ui,-apple-system,sans-serif;margin:0 auto;max-width:60rem;padding:1rem}",
        "h1{font-size:1.3rem;margin:.2rem 0 1rem}h1 small{color:var(--mute);font-weight:normal}",
        ".card{border:1px solid #8884;border-radius:10px;padding:.8rem 1rem;margin:0 0 1rem}",
        ".head{display:flex;flex-wrap:wrap;gap:.5rem;align-items:baseline;justify-content:space-between}",
        ".name{font-weight:600;font-size:1.05rem}.badge{border-radius:99px;padding:.05rem .6rem;color:#fff;font-size:.85rem}",
        ".ok{background:var(--ok)}.bad{background:var(--bad)}.wait{background:var(--wait)}.off{background:var(--mute)}",
        "dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:.6rem 0}dt{color:var(--mute)}dd{margin:0;overflow-wrap:anywhere}",
        "code{font:.9em ui-monospace,monospace}.err{color:var(--bad);white-space:pre-wrap;overflow-wrap:anywhere}",
        "table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{text-align:left;padding:.2rem .4rem;border-top:1px solid #8883}",
        "</style></head><body><h1>kubesync <small>GitOps sync status</small></h1>"
    ));
    if let Some(p) = problem {
        let _ = write!(
            html,
            "<p class=\"err\">Cannot list GitSyncs: {}</p>",
            escape(p)
        );
    }
    if syncs.is_empty() && problem.is_none() {
        html.push_str(
            "<p>No GitSync objects yet. Create one with <code>kubectl apply -f</code>.</p>",
        );
    }
    for sync in syncs {
        let status = sync.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let reconciling = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True");
        let (class, label) = if sync.spec.suspend {
            ("off", "Suspended")
        } else if reconciling {
            ("wait", "Syncing")
        } else {
            match ready.map(|c| c.status.as_str()) {
                Some("True") => ("ok", "Ready"),
                Some("False") => ("bad", "Failing"),
                _ => ("wait", "Pending"),
            }
        };
        let _ = write!(
            html,
            "<section class=\"card\"><div class=\"head\"><span class=\"name\">{}/{}</span><span class=\"badge {class}\">{label}</span></div><dl>",
            escape(&sync.namespace().unwrap_or_default()),
            escape(&sync.name_any()),
        );
        let mut row = |k: &str, v: String| {
            let _ = write!(html, "<dt>{k}</dt><dd>{v}</dd>");
        };
        row(
            "Repository",
            format!(
                "<code>{}</code> {}",
                escape(&crate::source::redact_url(&sync.spec.url)),
                escape(&sync.spec.path)
            ),
        );
        row(
            "Revision",
            format!(
                "<code>{}</code>",
                escape(
                    status
                        .last_applied_revision
                        .as_deref()
                        .unwrap_or("none yet")
                )
            ),
        );
        row(
            "Last sync",
            status
                .last_sync_time
                .as_ref()
                .map(|t| escape(&when(&t.0)))
                .unwrap_or_else(|| "never".into()),
        );
        if let Some(s) = &status.summary {
            row(
                "Objects",
                format!(
                    "{} managed · {} applied · {} pruned · {} failed · {} drift corrected · {} unhealthy",
                    s.managed, s.applied, s.pruned, s.failed, s.drift_corrected, s.unhealthy
                ),
            );
        }
        if let Some(e) = &status.last_error {
            row(
                "Last error",
                format!("<span class=\"err\">{}</span>", escape(e)),
            );
        }
        html.push_str("</dl>");
        if !status.history.is_empty() {
            html.push_str(
                "<table><tr><th>Time</th><th>Revision</th><th>Result</th><th>Duration</th></tr>",
            );
            for h in &status.history {
                let revision = h.revision.as_deref().unwrap_or("-");
                let short = crate::crd::short_revision(revision);
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{:.1} s</td></tr>",
                    escape(&when(&h.time.0)),
                    escape(short),
                    escape(&h.result),
                    h.duration_seconds
                );
            }
            html.push_str("</table>");
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_hex(token: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("key");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().expect("header"));
        h
    }

    #[test]
    fn github_gitea_and_gitlab_signatures_verify() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let token = b"s3cret";
        let good = hmac_hex(token, body);
        let github =
            signature(&headers("x-hub-signature-256", &format!("sha256={good}"))).expect("sig");
        assert!(verify(&github, body, token));
        assert!(!verify(&github, b"{}", token), "another body");
        assert!(!verify(&github, body, b"other"), "another token");
        let gitea = signature(&headers("x-gitea-signature", &good)).expect("sig");
        assert!(verify(&gitea, body, token));
        let gitlab = signature(&headers("x-gitlab-token", "s3cret")).expect("sig");
        assert!(verify(&gitlab, body, token));
        let wrong = signature(&headers("x-gitlab-token", "s3cre")).expect("sig");
        assert!(!verify(&wrong, body, token));
    }

    #[test]
    fn malformed_signatures_are_no_signature() {
        assert_eq!(signature(&HeaderMap::new()), None);
        assert_eq!(
            signature(&headers("x-hub-signature-256", "sha1=abcd")),
            None
        );
        assert_eq!(
            signature(&headers("x-hub-signature-256", "sha256=zz")),
            None
        );
        assert_eq!(signature(&headers("x-gitea-signature", "abc")), None);
    }

    #[test]
    fn the_bucket_refuses_a_burst_beyond_its_capacity() {
        let mut bucket = Bucket::new(3.0, 0.001);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn the_status_page_escapes_what_it_shows() {
        let mut sync = GitSync::new(
            "web",
            serde_json::from_value(json!({"url": "https://user:pw@example.org/<r>.git"}))
                .expect("spec"),
        );
        sync.metadata.namespace = Some("apps".into());
        sync.status = Some(crate::crd::GitSyncStatus {
            last_error: Some("<script>alert(1)</script>".into()),
            last_applied_revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            ..Default::default()
        });
        let html = render_status_page(&[sync], None);
        assert!(html.contains("apps/web"));
        assert!(html.contains("0123456789abcdef0123456789abcdef01234567"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(
            !html.contains("pw@"),
            "credentials in the URL are not shown"
        );
    }
}
