//! The status page `/`: one card per GitSync. Server-rendered, no scripts, refreshes itself.
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::state::HttpState;
use crate::crd::{GitSync, GitSyncStatus};

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

pub async fn status_page(State(state): State<Arc<HttpState>>) -> Response {
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

/// The page's head and style.
const HEAD: &str = concat!(
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
);

/// The status page: one card per GitSync. Server-rendered, no scripts, refreshes itself.
pub fn render_status_page(syncs: &[GitSync], problem: Option<&str>) -> String {
    let mut html = String::from(HEAD);
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
        card(&mut html, sync);
    }
    html.push_str("</body></html>\n");
    html
}

/// The badge: suspended, syncing, or what `Ready` says.
fn badge(sync: &GitSync, status: &GitSyncStatus) -> (&'static str, &'static str) {
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let reconciling =
        (status.conditions.iter()).any(|c| c.type_ == "Reconciling" && c.status == "True");
    if sync.spec.suspend {
        return ("off", "Suspended");
    }
    if reconciling {
        return ("wait", "Syncing");
    }
    match ready.map(|c| c.status.as_str()) {
        Some("True") => ("ok", "Ready"),
        Some("False") => ("bad", "Failing"),
        _ => ("wait", "Pending"),
    }
}

/// One GitSync's card: what it syncs, where it stands, its last syncs.
fn card(html: &mut String, sync: &GitSync) {
    let status = sync.status.clone().unwrap_or_default();
    let (class, label) = badge(sync, &status);
    let _ = write!(
        html,
        "<section class=\"card\"><div class=\"head\"><span class=\"name\">{}/{}</span><span class=\"badge {class}\">{label}</span></div><dl>",
        escape(&sync.namespace().unwrap_or_default()),
        escape(&sync.name_any()),
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(html, "<dt>{k}</dt><dd>{v}</dd>");
    };
    let url = crate::source::redact_url(&sync.spec.url);
    row(
        "Repository",
        format!("<code>{}</code> {}", escape(&url), escape(&sync.spec.path)),
    );
    let revision = status
        .last_applied_revision
        .as_deref()
        .unwrap_or("none yet");
    row("Revision", format!("<code>{}</code>", escape(revision)));
    let last_sync = status.last_sync_time.as_ref().map(|t| escape(&when(&t.0)));
    row("Last sync", last_sync.unwrap_or_else(|| "never".into()));
    if let Some(s) = &status.summary {
        row(
            "Objects",
            format!(
                "{} managed · {} applied · {} pruned · {} failed · {} drift corrected · {} unhealthy",
                s.managed, s.applied, s.pruned, s.failed, s.drift_corrected, s.unhealthy
            ),
        );
    }
    if !status.drift.is_empty() {
        let lines: Vec<String> = (status.drift.iter())
            .map(|d| format!("<code>{}</code>: {}", escape(&d.object), escape(&d.fields)))
            .collect();
        row("Drift (left as it is)", lines.join("<br>"));
    }
    if let Some(e) = &status.last_error {
        row(
            "Last error",
            format!("<span class=\"err\">{}</span>", escape(e)),
        );
    }
    html.push_str("</dl>");
    history(html, &status);
    html.push_str("</section>");
}

/// The last syncs, newest first.
fn history(html: &mut String, status: &GitSyncStatus) {
    if status.history.is_empty() {
        return;
    }
    html.push_str("<table><tr><th>Time</th><th>Revision</th><th>Result</th><th>Duration</th></tr>");
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            drift: vec![crate::crd::DriftedObject {
                object: "deployment/web -n apps".into(),
                fields: "spec.replicas".into(),
            }],
            last_applied_revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            ..Default::default()
        });
        let html = render_status_page(&[sync], None);
        assert!(html.contains("apps/web"));
        assert!(html.contains("0123456789abcdef0123456789abcdef01234567"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("Drift (left as it is)") && html.contains("spec.replicas"));
        assert!(!html.contains("<script>"));
        assert!(
            !html.contains("pw@"),
            "credentials in the URL are not shown"
        );
    }
}
