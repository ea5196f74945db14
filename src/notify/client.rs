//! The outbound HTTP(S) client: hyper with rustls and the system's CA certificates (the stack the
//! Kubernetes client already links), each request bounded in time, each answer in size.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::payload::Request;

/// What an answer may hold before it is cut (error bodies are shown shortened).
const MAX_ANSWER: usize = 64 * 1024;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

/// The receiver's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<u64>,
    /// The first bytes of the body (for error messages).
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
    #[error("bad request: {0}")]
    Build(String),
    #[error("reading the answer: {0}")]
    Answer(String),
}

impl HttpClient {
    /// A client whose requests give up after `timeout`. Fails only when the system has no CA
    /// certificates at all.
    pub fn new(timeout: Duration) -> Result<HttpClient, SendError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| SendError::Connect(format!("loading CA certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(HttpClient { inner, timeout })
    }

    pub async fn send(&self, request: &Request) -> Result<Answer, SendError> {
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(&request.url)
            .header(
                "user-agent",
                concat!("kubesync/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        // The builder's error names the part that is wrong, never its value.
        let built = builder
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| SendError::Build(e.to_string()))?;
        let exchange = async {
            let response =
                (self.inner.request(built).await).map_err(|e| SendError::Connect(describe(&e)))?;
            let status = response.status().as_u16();
            let retry_after = (response.headers().get("retry-after"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = match Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(e) if status < 300 => return Err(SendError::Answer(e.to_string())),
                Err(_) => Bytes::new(),
            };
            Ok(Answer {
                status,
                retry_after,
                body: super::message::truncated(String::from_utf8_lossy(&body).trim(), 200),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }
}

/// The causes of a client error, innermost last (hyper's own text is only "client error").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.dedup();
    parts.join(": ")
}
