//! What the load-driving benchmarks share: a fresh PostgreSQL database per
//! run, and a simulated host attached through the real registration flow.

use cobble_client::{Connection, Credentials, Security};
use cobble_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use tonic::transport::Channel;

/// A new empty database on the PostgreSQL server, for one run.
pub async fn fresh_postgres(admin_url: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(admin_url).await?;
    let database = format!("cobble_bench_{}", cobble_core::random_token());
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    match admin_url.rsplit_once('/') {
        Some((base, _)) => Ok(format!("{base}/{database}")),
        None => anyhow::bail!("COBBLE_TEST_POSTGRES_URL needs a database path"),
    }
}

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
