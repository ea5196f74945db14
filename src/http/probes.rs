//! `/metrics`, `/healthz` and `/readyz`.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::state::HttpState;

pub async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

pub async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.readiness.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}
