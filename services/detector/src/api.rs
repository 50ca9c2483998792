//! The detector's HTTP API: `GET /v1/suspicion`, the probes and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use kvorum_protocol::detector::SuspicionReport;
use kvorum_server::{Readiness, with_standard_layers};

use crate::{Shared, lock};

/// The detector's routes, wrapped in the standard layers.
pub fn router(shared: Arc<Shared>) -> Router {
    let follower = shared.follower.clone();
    let readiness = Readiness::new(move || follower.has_answered());
    let routes = Router::new()
        .route("/healthz", get(kvorum_server::healthz))
        .route("/readyz", readiness.route())
        .route("/v1/suspicion", get(suspicion))
        .with_state(shared);
    with_standard_layers(routes, Duration::from_secs(5))
}

/// Every monitored process's phi and verdict, and whether this detector is the active one.
async fn suspicion(State(shared): State<Arc<Shared>>) -> Json<SuspicionReport> {
    let now = shared.now_ms();
    let active = shared.is_active();
    Json(lock(&shared.monitor).report(now, active))
}
