//! What the load-driving benchmarks share: a fresh PostgreSQL database per
//! run (from the harness), and a simulated host attached through the real
//! registration flow.

use cobble_client::{Connection, Credentials, Security};
use cobble_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use tonic::transport::Channel;

pub use cobble_e2e::fresh_postgres;

/// A simulated host: its own connection, registered as a new account.
pub async fn attach(
    url: &str,
    security: &Security,
    account: String,
    host_name: String,
    cpus: u32,
) -> anyhow::Result<(Connection, WorkerServiceClient<Channel>)> {
    let channel = cobble_client::connect(url, security).await?;
    let attached = WorkerServiceClient::new(channel.clone())
        .register_host(pb::RegisterHostRequest {
            account,
            host_name,
            cpus,
            ..Default::default()
        })
        .await?
        .into_inner();
    let connection = Connection::from_channel(
        channel.clone(),
        Credentials::Host {
            id: attached.host_id,
            key: attached.host_key,
        },
    );
    Ok((connection, WorkerServiceClient::new(channel)))
}
