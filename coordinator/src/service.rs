//! The gRPC services: thin adapters from protocol messages to [`Store`]
//! calls. Authentication and the error-to-status mapping happen here and
//! nowhere else.

mod blobs;
mod jobs;
mod stats;
mod worker;

pub use blobs::BlobApi;
pub use jobs::JobApi;
pub use stats::StatsApi;
pub use worker::WorkerApi;

use crate::error::Error;
use crate::store::{HostIdentity, Store};
use tonic::metadata::MetadataMap;

/// Metadata keys carrying a host's credentials on every worker call.
pub const HOST_ID_HEADER: &str = "x-cobble-host";
pub const HOST_KEY_HEADER: &str = "x-cobble-host-key";

async fn authenticate(store: &Store, metadata: &MetadataMap) -> Result<HostIdentity, Error> {
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "missing {key} metadata; attach the host with RegisterHost first"
                ))
            })
    };
    let host_id: i64 = text(HOST_ID_HEADER)?
        .parse()
        .map_err(|_| Error::Unauthenticated(format!("{HOST_ID_HEADER} is not a host id")))?;
    store
        .authenticate_host(host_id, text(HOST_KEY_HEADER)?)
        .await
}
