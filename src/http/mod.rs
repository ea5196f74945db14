//! The controller's one HTTP listener: `/metrics`, `/healthz`, `/readyz` (probes), the status page
//! `/`, and push webhooks at `/hooks/<namespace>/<name>`.
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

mod probes;
mod state;
mod status_page;
mod webhooks;

pub use state::{HttpState, Readiness};
pub use status_page::render_status_page;
pub use webhooks::WEBHOOK_BODY_LIMIT;

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(status_page::status_page))
        .route("/metrics", get(probes::metrics))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/hooks/{namespace}/{name}", post(webhooks::webhook))
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
