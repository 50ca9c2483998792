//! The controller's HTTP API: `GET /v1/moves`, the probes and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use kvorum_metad_client::{Follower, Lease};
use kvorum_protocol::recovery::RecoveryReport;
use kvorum_server::{Readiness, with_standard_layers};

use crate::Moves;

#[derive(Debug, Clone)]
struct AppState {
    moves: Arc<Moves>,
    lease: Lease,
}

/// The controller's routes, wrapped in the standard layers.
pub fn router(moves: Arc<Moves>, lease: Lease, follower: Follower) -> Router {
    let readiness = Readiness::new(move || follower.has_answered());
    let routes = Router::new()
        .route("/healthz", get(kvorum_server::healthz))
        .route("/readyz", readiness.route())
        .route("/v1/moves", get(report))
        .with_state(AppState { moves, lease });
    with_standard_layers(routes, Duration::from_secs(5))
}

/// Moves under way and those that ended, and whether this controller is the active one.
async fn report(State(state): State<AppState>) -> Json<RecoveryReport> {
    Json(state.moves.report(state.lease.is_held()))
}
