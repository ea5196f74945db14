//! Push webhooks at `/hooks/<namespace>/<name>`, verified against the GitSync's
//! `webhookSecretRef` (key `token`) in constant time. A valid one sets `kubesync.dev/requestedAt`
//! on the GitSync, which the leading replica watches, so any replica can take the request.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::state::HttpState;
use crate::crd::{GitSync, REQUESTED_AT_ANNOTATION};

/// Largest webhook body read (GitHub caps payloads at 25 MB but pushes are far smaller).
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

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

fn reply(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// Accepts a push for one GitSync: rate-limited, size-limited, authenticated; then requests a
/// sync (pushes within a second coalesce into one).
pub async fn webhook(
    State(state): State<Arc<HttpState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let taken = (state.webhooks.lock())
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if !taken {
        return reply(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    }
    let Ok(body) = to_bytes(body, WEBHOOK_BODY_LIMIT).await else {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    };
    let key = format!("{namespace}/{name}");
    if !authentic(&state, &namespace, &name, &headers, &body).await {
        return reply(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    {
        let mut triggered = state.triggered.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |at: &Instant| at.elapsed() < Duration::from_secs(1);
        if triggered.get(&key).is_some_and(recent) {
            return reply(StatusCode::ACCEPTED, "sync already requested\n");
        }
        triggered.insert(key.clone(), Instant::now());
    }
    let syncs: Api<GitSync> = Api::namespaced(state.client.clone(), &namespace);
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}});
    match syncs
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(sync = %key, "webhook: sync requested");
            reply(StatusCode::ACCEPTED, "sync requested\n")
        }
        Err(e) => {
            warn!(sync = %key, error = %crate::kube_ext::kube_message(&e), "webhook: requesting a sync");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "could not request a sync\n",
            )
        }
    }
}

/// Whether the request carries a signature made with the GitSync's webhook token. An unknown
/// GitSync, one without a webhook secret and a bad signature all look the same to the sender.
async fn authentic(
    state: &HttpState,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let Some(signature) = signature(headers) else {
        return false;
    };
    if state.namespace.as_ref().is_some_and(|ns| ns != namespace) {
        return false;
    }
    let syncs: Api<GitSync> = Api::namespaced(state.client.clone(), namespace);
    let Ok(Some(sync)) = syncs.get_opt(name).await else {
        return false;
    };
    let Some(secret_ref) = &sync.spec.webhook_secret_ref else {
        return false;
    };
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), namespace);
    let token = match secrets.get_opt(&secret_ref.name).await {
        Ok(Some(secret)) => (secret.data.unwrap_or_default())
            .get("token")
            .map(|t| t.0.clone()),
        _ => None,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        warn!(sync = %format!("{namespace}/{name}"), "webhook secret missing or without key token");
        return false;
    };
    let valid = verify(&signature, body, &token);
    if !valid {
        warn!(sync = %format!("{namespace}/{name}"), "webhook with a bad signature refused");
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().expect("header"));
        h
    }

    #[test]
    fn github_gitea_and_gitlab_signatures_verify() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let token = b"s3cret";
        // The notifications' signer: another code path than the verifier under test.
        let good = crate::notify::payload::sign(token, body);
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
}
