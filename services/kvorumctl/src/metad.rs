//! `kvorumctl metad …`: the metadata group's members, and changing them one
//! replica at a time through metad's log.

use kvorum_protocol::metadata::{AddMember, MembersView, ReplaceMember};
use reqwest::{Method, StatusCode};

use crate::{Answer, Client, cluster_view};

/// The metadata service.
#[derive(Debug, clap::Args)]
pub struct MetadArgs {
    /// A metad replica's `host:port` (default: the replicas the router's cluster view names).
    #[arg(long, env = "KVORUM_METAD")]
    metad: Option<String>,

    #[command(subcommand)]
    command: MetadCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MetadCommand {
    /// The members: id, life of its store, address, and the leader.
    Members,
    /// Add the replica serving at --address (started with `--id ID`, an empty
    /// store, and --peers naming this group's replicas).
    Add {
        /// The new replica's id.
        id: u64,
        /// Where it serves (`host:port`).
        #[arg(long, env = "KVORUM_METAD_ADD_ADDRESS")]
        address: String,
    },
    /// Remove a member from the group.
    Remove {
        /// The member's id.
        id: u64,
    },
    /// A member that lost its store (a wiped disk, a deleted PersistentVolumeClaim)
    /// and was restarted empty takes its own place again, in its new life.
    Replace {
        /// The member's id.
        id: u64,
        /// Where the replacement serves, if not at the member's address.
        #[arg(long, env = "KVORUM_METAD_REPLACE_ADDRESS")]
        address: Option<String>,
    },
}

/// Runs one `metad` subcommand.
pub async fn run(client: &Client, args: MetadArgs) -> anyhow::Result<()> {
    let replicas = match args.metad {
        Some(address) => vec![address],
        None => {
            let view = cluster_view(client).await?;
            view.metad.replicas.into_iter().map(|r| r.address).collect()
        }
    };
    anyhow::ensure!(
        !replicas.is_empty(),
        "no metad replica is known; pass --metad host:port"
    );
    let (method, path, body) = match &args.command {
        MetadCommand::Members => (Method::GET, "/v1/members".to_owned(), Vec::new()),
        MetadCommand::Add { id, address } => (
            Method::POST,
            "/v1/members".to_owned(),
            serde_json::to_vec(&AddMember {
                id: *id,
                address: address.clone(),
            })?,
        ),
        MetadCommand::Remove { id } => (Method::DELETE, format!("/v1/members/{id}"), Vec::new()),
        MetadCommand::Replace { id, address } => (
            Method::POST,
            format!("/v1/members/{id}/replace"),
            serde_json::to_vec(&ReplaceMember {
                address: address.clone(),
            })?,
        ),
    };
    let answer = first_answer(client, &replicas, method, &path, body).await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
    let view: MembersView = serde_json::from_slice(&answer.body)?;
    print!("{}", crate::table::metad_members(&view));
    Ok(())
}

/// The first replica's answer that is not a transport failure (a follower
/// sends writes on to the leader itself).
async fn first_answer(
    client: &Client,
    replicas: &[String],
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Answer> {
    let mut failures = Vec::new();
    for address in replicas {
        match client
            .call_at(
                &format!("http://{address}"),
                method.clone(),
                path,
                body.clone(),
            )
            .await
        {
            Ok(answer) => return Ok(answer),
            Err(error) => failures.push(format!("{address}: {error}")),
        }
    }
    anyhow::bail!("no metad replica answered: {}", failures.join("; "))
}
