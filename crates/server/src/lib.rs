//! The HTTP inference server behind `fhec serve` (docs/DEPLOYMENT.md#the-http-server).
//!
//! Protocol and FHE work are kept apart: handlers validate requests and hand the work
//! to the compute [`pool`] (a bounded queue: a full queue answers 503 with
//! Retry-After); the only shared state is the [`keystore`] (registered keys on disk,
//! prepared keys in a memory-bounded cache) and the [`metrics`]. Every error is a JSON
//! body `{"error": "…"}` with a 4xx status for anything the client sent.
//!
//! | route | |
//! |---|---|
//! | `GET /v1/health` | liveness, with the model id |
//! | `GET /v1/client` | the client part (`FHEC-CLIENT` file): all a client needs |
//! | `GET /v1/model` | costs: PBS per sample, predicted latency, parameters, sizes |
//! | `POST /v1/keys` | an evaluation key (`FHEC-EVALUATION-KEY` file) → `{"key": id}` |
//! | `POST /v1/predict?key=ID` | encrypted inputs (`FHEC-INPUTS`) → encrypted outputs (`FHEC-OUTPUTS`) |
//! | `GET /metrics` | Prometheus text |

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod keystore;
mod metrics;
mod pool;
mod prepared;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fhec_runtime::{
    ciphertexts::MAX_SAMPLES, frame, DeploymentSizes, EncryptedInputs, KeyId, Server,
};
use serde::Deserialize;

pub use keystore::{KeyStore, Registered};
pub use metrics::Metrics;
pub use pool::Pool;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Threads evaluating batches (each batch's bootstraps also run in parallel).
    pub workers: usize,
    /// Batches (and key registrations) waiting beyond those running; more get 503.
    pub queue: usize,
    /// Most bytes of prepared evaluation keys kept in memory.
    pub key_cache_bytes: usize,
    /// Most evaluation keys registered for the model.
    pub max_keys: usize,
    /// Most samples in one predict request.
    pub max_samples: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 16,
            key_cache_bytes: 4 << 30,
            max_keys: 256,
            max_samples: 256,
        }
    }
}

/// Everything a request may touch.
pub struct AppState {
    server: Arc<Server>,
    client_part: Vec<u8>,
    model: serde_json::Value,
    keys: Arc<KeyStore>,
    pool: Pool,
    metrics: Metrics,
    config: Config,
    /// Request body limits, from the model.
    key_limit: usize,
    inputs_limit: usize,
}

/// A failed request: its status and a message for the JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, m)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(500, format!("internal error: {e}"))
    }
    fn busy() -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(503, "the server is busy; retry later")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("key directory {0}: {1}")]
    KeyDir(String, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// The state for serving `server`, with registered keys under `key_dir`.
    pub fn new(server: Server, key_dir: &Path, config: Config) -> Result<Arc<Self>, ServeError> {
        let server = Arc::new(server);
        let part = server.part();
        let keys = KeyStore::open(
            key_dir,
            server.clone(),
            config.key_cache_bytes,
            config.max_keys,
        )
        .map_err(|e| ServeError::KeyDir(key_dir.display().to_string(), e))?;
        let sizes = DeploymentSizes::of(&part.circuit, server.info(), &part.params);
        let key_limit = fhec_runtime::EvaluationKey::body_bytes(&part.params.keys)
            + (1 << 20)
            + frame::HEADER_BYTES;
        let samples = config.max_samples.clamp(1, MAX_SAMPLES);
        let inputs_limit =
            (sizes.input_bytes_per_sample * samples) + (1 << 20) + frame::HEADER_BYTES;
        let model = model_description(&server, &sizes, samples, keys.prepared_key_bytes());
        Ok(Arc::new(AppState {
            client_part: part.client.to_bytes(),
            model,
            keys: Arc::new(keys),
            pool: Pool::new(config.workers, config.queue)?,
            metrics: Metrics::default(),
            config: Config {
                max_samples: samples,
                ..config
            },
            key_limit,
            inputs_limit,
            server,
        }))
    }

    pub fn key_dir(&self) -> &Path {
        self.keys.dir()
    }

    /// Finishes queued and running work and stops the compute threads.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// What `GET /v1/model` answers.
fn model_description(
    server: &Server,
    sizes: &DeploymentSizes,
    max_samples: usize,
    prepared_key_bytes: usize,
) -> serde_json::Value {
    let part = server.part();
    let info = server.info();
    let p = &part.params;
    let threads = rayon::current_num_threads();
    serde_json::json!({
        "model_id": part.model_id.to_string(),
        "source": part.source,
        "fhec_version": env!("CARGO_PKG_VERSION"),
        "format_version": frame::FORMAT_VERSION,
        "pbs_per_sample": info.pbs_per_sample,
        "predicted_ms_per_sample_one_core": p.predicted_ms_per_sample,
        "predicted_latency": {
            "threads": threads,
            "ms_per_sample": fhec_backend_tfhe::predicted_latency_ms(&part.circuit, info, p, threads),
        },
        "encoding_bits": info.encoding_bits,
        "p_error": {
            "per_pbs": p.p_error_per_pbs,
            "output": p.p_error_output,
            "sample": p.p_error_circuit,
        },
        "parameters": {
            "input_dimension": p.keys.input_dimension,
            "master_dimension": p.keys.master_dimension(),
            "partitions": p.partitions.iter().map(|q| serde_json::json!({
                "precision": q.precision,
                "pbs_per_sample": q.pbs_per_sample,
                "lwe_dimension": q.params.lwe_dimension,
                "glwe_dimension": q.params.glwe_dimension,
                "polynomial_size": q.params.polynomial_size,
                "pbs_base_log": q.params.pbs_base_log,
                "pbs_level": q.params.pbs_level,
                "ks_base_log": q.params.ks_base_log,
                "ks_level": q.params.ks_level,
                "ks_input_dimension": q.ks_input_dimension,
                "bsk_body_bits": q.params.bsk_body_bits,
            })).collect::<Vec<_>>(),
        },
        "sizes": sizes,
        "prepared_key_bytes": prepared_key_bytes,
        "max_samples_per_request": max_samples,
    })
}

/// The routes, with request metrics.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/client", get(client_part))
        .route("/v1/model", get(model))
        .route("/v1/keys", post(register_key))
        .route("/v1/predict", post(predict))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    let closing = state.clone();
    // joining the compute threads blocks: off the async runtime
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    Ok(())
}

async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .request(&route, response.status().as_u16(), start.elapsed());
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "model_id": state.server.part().model_id.to_string(),
        "pending": state.pool.pending(),
    }))
    .into_response()
}

fn octets(bytes: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response()
}

async fn client_part(State(state): State<Arc<AppState>>) -> Response {
    octets(state.client_part.clone())
}

async fn model(State(state): State<Arc<AppState>>) -> Response {
    Json(state.model.clone()).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let g = metrics::Gauges {
        queue_pending: state.pool.pending(),
        key_preparations: state.keys.preparations().0,
        key_prepare_seconds: state.keys.preparations().1,
        key_restores: state.keys.restores().0,
        key_restore_seconds: state.keys.restores().1,
        prepared_keys: state.keys.prepared_count(),
        prepared_key_bytes: state.keys.prepared_count() * state.keys.prepared_key_bytes(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&g),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such route; see /v1/health, /v1/client, /v1/model, /v1/keys, /v1/predict, /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(405, "method not allowed: GET /v1/health, /v1/client, /v1/model, /metrics; POST /v1/keys, /v1/predict?key=ID")
}

/// Refuses a body its Content-Length declares over `limit` before reading a byte (a
/// client that sent `Expect: 100-continue` then sends nothing).
fn check_length(headers: &HeaderMap, limit: usize, what: &str) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(ApiError::new(
            413,
            format!("{what}: {n} bytes, over this model's limit of {limit}"),
        )),
        _ => Ok(()),
    }
}

/// Reads a request body of at most `limit` bytes, after checking its declared length
/// (the body is not touched before: no `100 Continue` for a body that is refused).
async fn read_body(
    headers: &HeaderMap,
    b: Body,
    limit: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    check_length(headers, limit, what)?;
    axum::body::to_bytes(b, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::new(
                413,
                format!("{what}: larger than this model's limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("{what}: {e}"))
        }
    })
}

/// Runs `f` on the compute pool and waits for it.
async fn on_pool<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let rx = state.pool.submit(f).map_err(|_| ApiError::busy())?;
    rx.await
        .map_err(|_| ApiError::internal("the compute pool stopped"))?
        .map_err(|_| ApiError::internal("evaluation failed"))?
}

async fn register_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, b, state.key_limit, "evaluation key").await?;
    let keys = state.keys.clone();
    // parsing a key of hundreds of MB is compute work, not the async runtime's
    let registered = on_pool(&state, move || keys.register(&bytes)).await?;
    let (status, id, new) = match registered {
        Registered::New(id) => (StatusCode::CREATED, id, true),
        Registered::Existing(id) => (StatusCode::OK, id, false),
    };
    if new {
        state.metrics.key_registered();
    }
    // prepare the key now, while the client encrypts and sends its inputs, so the first
    // prediction does not wait for it; with the queue full, the first prediction will
    let keys = state.keys.clone();
    let _ = state.pool.submit(move || {
        let _ = keys.prepared(id);
    });
    Ok((
        status,
        Json(serde_json::json!({ "key": id.to_string(), "new": new })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

async fn predict(
    State(state): State<Arc<AppState>>,
    q: Result<Query<KeyQuery>, QueryRejection>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|_| ApiError::bad_request("give the evaluation key's id: /v1/predict?key=ID"))?;
    let id: KeyId = q
        .key
        .parse()
        .map_err(|e| ApiError::bad_request(format!("key: {e}")))?;
    let bytes = read_body(&headers, b, state.inputs_limit, "encrypted inputs").await?;
    let inputs = EncryptedInputs::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request(format!("encrypted inputs: {e}")))?;
    if inputs.samples.len() > state.config.max_samples {
        return Err(ApiError::new(
            413,
            format!(
                "{} samples in one request, at most {}",
                inputs.samples.len(),
                state.config.max_samples
            ),
        ));
    }
    state
        .server
        .check_inputs(id, &inputs)
        .map_err(|e| ApiError::bad_request(format!("encrypted inputs: {e}")))?;
    if !state.keys.exists(id) {
        return Err(ApiError::not_found(format!(
            "no evaluation key {id} is registered; POST it to /v1/keys"
        )));
    }
    let (server, keys) = (state.server.clone(), state.keys.clone());
    let pbs = server.info().pbs_per_sample;
    let samples = inputs.samples.len();
    let outputs = on_pool(&state, move || {
        let key = keys.prepared(id)?;
        let compute = Instant::now();
        let out = server
            .run(&key, &inputs, &|_, _| {})
            .map_err(|e| ApiError::bad_request(format!("encrypted inputs: {e}")))?;
        Ok((out.to_bytes(), compute.elapsed()))
    })
    .await;
    let (outputs, compute) = outputs?;
    state.metrics.evaluated(samples, samples * pbs, compute);
    Ok(octets(outputs))
}
