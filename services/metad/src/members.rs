//! The membership API: `GET /v1/members`, `POST /v1/members` (add),
//! `DELETE /v1/members/{id}` (remove) and `POST /v1/members/{id}/replace`
//! (a replica that lost its store takes its own place in a new life).
//!
//! Each change is one replica, goes through the Paxos log, and answers once
//! decided; the consensus core refuses a second change while one is undecided.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use kvorum_consensus::Member;
use kvorum_protocol::metadata::{AddMember, MembersView, ReplaceMember};
use kvorum_protocol::paxos::ReplicaIdentity;
use kvorum_server::JsonBody;
use tokio::sync::oneshot;

use crate::api::{ApiError, AppState};
use crate::node::{ChangeRefused, Input};

/// One replica's change to the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new replica joins.
    Add(Member),
    /// A member leaves.
    Remove(u64),
    /// A member comes back in a new life (it lost its store), maybe at a new address.
    Replace(Member),
}

/// What a change comes to, given the members as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The members already are what the change asks (a retried request).
    Unchanged,
    /// Propose these members.
    Propose(Vec<Member>),
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The change names no member.
    NotFound(u64),
    /// The change contradicts the members as they are.
    Conflict(String),
    /// The change cannot work at all.
    Invalid(String),
}

/// The members `change` leads to from `current`.
pub fn plan(current: &[Member], change: &Change) -> Result<Plan, PlanError> {
    match change {
        Change::Add(new) => match current.iter().find(|m| m.id == new.id) {
            Some(held) if held == new => Ok(Plan::Unchanged),
            Some(held) => Err(PlanError::Conflict(format!(
                "replica {} is already a member (life {} at {}); a replica that lost its store is replaced, not added",
                held.id, held.incarnation, held.address
            ))),
            None => Ok(Plan::Propose(
                current.iter().cloned().chain([new.clone()]).collect(),
            )),
        },
        Change::Remove(id) => {
            if !current.iter().any(|m| m.id == *id) {
                return Err(PlanError::NotFound(*id));
            }
            if current.len() == 1 {
                return Err(PlanError::Invalid(format!(
                    "replica {id} is the last member; a group needs one"
                )));
            }
            Ok(Plan::Propose(
                current.iter().filter(|m| m.id != *id).cloned().collect(),
            ))
        }
        Change::Replace(new) => {
            let Some(held) = current.iter().find(|m| m.id == new.id) else {
                return Err(PlanError::NotFound(new.id));
            };
            // A retry after a replacement that went through lands here too: the
            // message says it is done.
            if held.incarnation == new.incarnation {
                return Err(PlanError::Conflict(format!(
                    "replica {} still has its store (life {:x}) and is a member in it: nothing to replace; only a replica that lost its store is replaced",
                    new.id, new.incarnation
                )));
            }
            Ok(Plan::Propose(
                current
                    .iter()
                    .map(|m| {
                        if m.id == new.id {
                            new.clone()
                        } else {
                            m.clone()
                        }
                    })
                    .collect(),
            ))
        }
    }
}

/// `GET /v1/members`.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<MembersView>, ApiError> {
    members(&state).await.map(Json)
}

/// `POST /v1/members`: adds the replica serving at the given address.
pub async fn add(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    JsonBody(request): JsonBody<AddMember>,
) -> Result<Json<MembersView>, ApiError> {
    if !kvorum_protocol::cluster::is_host_port(&request.address) || request.id == 0 {
        return Err(ApiError::Membership(format!(
            "add needs a replica id above 0 and its host:port, not {} at {:?}",
            request.id, request.address
        )));
    }
    let identity = ask(&state, request.id, &request.address).await?;
    let new = Member {
        id: request.id,
        incarnation: identity.incarnation,
        address: request.address,
    };
    change(&state, uri, Change::Add(new)).await
}

/// `DELETE /v1/members/{id}`.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<u64>,
) -> Result<Json<MembersView>, ApiError> {
    change(&state, uri, Change::Remove(id)).await
}

/// `POST /v1/members/{id}/replace`: the replica now serving at the member's
/// address (or the one given) lost its store; it takes the member's place.
pub async fn replace(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Result<Json<MembersView>, ApiError> {
    // The body is optional: without one, the replacement serves where the member did.
    let request: ReplaceMember = if body.iter().all(u8::is_ascii_whitespace) {
        ReplaceMember::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Membership(format!("the body is not a replace request: {e}")))?
    };
    let view = members(&state).await?;
    let Some(held) = view.members.iter().find(|m| m.id == id) else {
        return Err(not_a_member(id));
    };
    let address = request.address.unwrap_or_else(|| held.address.clone());
    if !kvorum_protocol::cluster::is_host_port(&address) {
        return Err(ApiError::Membership(format!(
            "{address:?} is not host:port"
        )));
    }
    let identity = ask(&state, id, &address).await?;
    let new = Member {
        id,
        incarnation: identity.incarnation,
        address,
    };
    change(&state, uri, Change::Replace(new)).await
}

fn not_a_member(id: u64) -> ApiError {
    ApiError::Refused(kvorum_protocol::metadata::MetadataError::NotFound {
        message: format!("replica {id} is not a metad member"),
    })
}

async fn members(state: &AppState) -> Result<MembersView, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.submit(Input::Members(reply))?;
    state.wait(answer).await
}

/// Who serves at `address`: it must be replica `id`, settled in this group.
async fn ask(state: &AppState, id: u64, address: &str) -> Result<ReplicaIdentity, ApiError> {
    let identity: ReplicaIdentity = state
        .client
        .get_json(address, "/internal/v1/paxos/identity")
        .await
        .map_err(|e| ApiError::Membership(format!("cannot ask {address} who it is: {e}")))?;
    if identity.id != id {
        return Err(ApiError::MembershipConflict(format!(
            "{address} serves replica {}, not {id}",
            identity.id
        )));
    }
    if identity.cluster != state.cluster() {
        return Err(ApiError::MembershipConflict(format!(
            "replica {id} at {address} has not joined this metadata group (start it with --peers naming this group's replicas)"
        )));
    }
    Ok(identity)
}

async fn change(state: &AppState, uri: Uri, change: Change) -> Result<Json<MembersView>, ApiError> {
    let view = members(state).await?;
    let members = match plan(&view.members, &change) {
        Ok(Plan::Unchanged) => return Ok(Json(view)),
        Ok(Plan::Propose(members)) => members,
        Err(PlanError::NotFound(id)) => {
            return Err(not_a_member(id));
        }
        Err(PlanError::Conflict(reason)) => return Err(ApiError::MembershipConflict(reason)),
        Err(PlanError::Invalid(reason)) => return Err(ApiError::Membership(reason)),
    };
    let (reply, answer) = oneshot::channel();
    state.submit(Input::ChangeMembers(members, reply))?;
    match state.wait(answer).await? {
        Ok(Ok(members)) => {
            tracing::info!(?change, "metad membership changed");
            Ok(Json(MembersView {
                members,
                leader: None,
                pending_change: None,
            }))
        }
        Ok(Err(ChangeRefused::Refused(refused))) => {
            Err(ApiError::MembershipConflict(refused.to_string()))
        }
        Ok(Err(lost @ ChangeRefused::Lost)) => Err(ApiError::MembershipConflict(lost.to_string())),
        Err(not_leader) => Err(state.redirect(not_leader, uri)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, incarnation: u64) -> Member {
        Member {
            id,
            incarnation,
            address: format!("metad-{id}:9001"),
        }
    }

    #[test]
    fn each_change_moves_one_replica_and_a_retry_changes_nothing() {
        let current = vec![member(1, 10), member(2, 20), member(3, 30)];
        assert_eq!(
            plan(&current, &Change::Add(member(4, 40))),
            Ok(Plan::Propose(vec![
                member(1, 10),
                member(2, 20),
                member(3, 30),
                member(4, 40)
            ]))
        );
        assert_eq!(
            plan(&current, &Change::Add(member(3, 30))),
            Ok(Plan::Unchanged)
        );
        assert!(matches!(
            plan(&current, &Change::Add(member(3, 31))),
            Err(PlanError::Conflict(_))
        ));
        assert_eq!(
            plan(&current, &Change::Remove(2)),
            Ok(Plan::Propose(vec![member(1, 10), member(3, 30)]))
        );
        assert_eq!(
            plan(&current, &Change::Remove(9)),
            Err(PlanError::NotFound(9))
        );
        assert!(matches!(
            plan(&[member(1, 10)], &Change::Remove(1)),
            Err(PlanError::Invalid(_))
        ));
        assert_eq!(
            plan(&current, &Change::Replace(member(2, 21))),
            Ok(Plan::Propose(vec![
                member(1, 10),
                member(2, 21),
                member(3, 30)
            ]))
        );
        assert!(matches!(
            plan(&current, &Change::Replace(member(2, 20))),
            Err(PlanError::Conflict(_))
        ));
        let moved = Member {
            address: "elsewhere:9001".to_owned(),
            ..member(2, 20)
        };
        assert!(
            matches!(
                plan(&current, &Change::Replace(moved)),
                Err(PlanError::Conflict(_))
            ),
            "a replica with its store is not replaced"
        );
        assert_eq!(
            plan(&current, &Change::Replace(member(7, 70))),
            Err(PlanError::NotFound(7))
        );
    }
}
