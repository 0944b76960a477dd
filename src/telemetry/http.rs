//! The one HTTP listener: `/metrics`, `/healthz`, `/readyz`, and (optionally) the
//! leaderboard and rate-counter read endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::sinks::Sink;
use crate::sinks::leaderboard::LeaderboardReader;
use crate::sinks::rate_counter::RateReader;
use crate::telemetry::latency;

/// What `/readyz` looks at.
pub struct Readiness {
    /// Set by the source once subscribed, cleared on disconnect.
    pub source_ready: AtomicBool,
    /// Every sink, as `pipeline.sink`.
    pub sinks: Vec<(String, Arc<dyn Sink>)>,
}

impl Readiness {
    pub fn new(sinks: Vec<(String, Arc<dyn Sink>)>) -> Arc<Readiness> {
        Arc::new(Readiness {
            source_ready: AtomicBool::new(false),
            sinks,
        })
    }

    /// `Ok` or the list of what is not ready.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !self.source_ready.load(Ordering::Acquire) {
            problems.push("source: not subscribed".to_string());
        }
        let checks = self.sinks.iter().map(|(name, sink)| async move {
            match tokio::time::timeout(Duration::from_secs(2), sink.check_ready()).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("{name}: {error}")),
                Err(_) => Some(format!("{name}: no answer within 2s")),
            }
        });
        problems.extend(
            futures::future::join_all(checks)
                .await
                .into_iter()
                .flatten(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
    leaderboards: Option<Arc<LeaderboardReader>>,
    rates: Option<Arc<RateReader>>,
}

/// Binds the listener now (so a taken port fails start-up) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
    leaderboards: Option<Arc<LeaderboardReader>>,
    rates: Option<Arc<RateReader>>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("http.listen {listen}: cannot bind: {error}"))?;
    let bound = listener.local_addr()?;
    let state = HttpState {
        metrics,
        readiness,
        leaderboards,
        rates,
    };
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/leaderboards/{board}", get(leaderboard_handler))
        .route("/rate/{user_id}", get(rate_handler))
        .with_state(state);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "http listener failed");
        }
    });
    Ok((bound, task))
}

async fn metrics_handler(State(state): State<HttpState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], {
        let mut text = state.metrics.render();
        latency::render(&mut text);
        text
    })
        .into_response()
}

async fn ready_handler(State(state): State<HttpState>) -> Response {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TopQuery {
    day: Option<String>,
    n: Option<usize>,
}

async fn leaderboard_handler(
    State(state): State<HttpState>,
    Path(board): Path<String>,
    Query(query): Query<TopQuery>,
) -> Response {
    let Some(reader) = state.leaderboards else {
        return (
            StatusCode::NOT_FOUND,
            "leaderboard endpoints are disabled\n",
        )
            .into_response();
    };
    match reader
        .top(&board, query.day.as_deref(), query.n.unwrap_or(10))
        .await
    {
        Ok(top) => axum::Json(top).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}

async fn rate_handler(State(state): State<HttpState>, Path(user_id): Path<String>) -> Response {
    let Some(reader) = state.rates else {
        return (StatusCode::NOT_FOUND, "rate endpoints are disabled\n").into_response();
    };
    match reader.current(&user_id).await {
        Ok(current) => axum::Json(current).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}
