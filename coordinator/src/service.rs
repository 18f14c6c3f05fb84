//! The gRPC services: thin adapters from protocol messages to [`Store`]
//! calls. Authentication and the error-to-status mapping happen here and
//! nowhere else.

mod blobs;
mod jobs;
mod stats;
mod worker;

pub use blobs::{BlobApi, MAX_OPEN_UPLOADS};
pub use jobs::JobApi;
pub use stats::StatsApi;
pub use worker::WorkerApi;

use crate::error::Error;
use crate::store::{HostIdentity, Researcher, Store};
use cobble_core::auth::{BEARER_PREFIX, HOST_ID_HEADER, HOST_KEY_HEADER, RESEARCHER_HEADER};
use tonic::metadata::MetadataMap;

/// Checks a researcher's token (`authorization: Bearer <token>`) and says
/// whose it is.
async fn require_researcher(store: &Store, metadata: &MetadataMap) -> Result<Researcher, Error> {
    let presented = metadata
        .get(RESEARCHER_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix(BEARER_PREFIX));
    match presented {
        Some(token) => store.researcher_by_token(token).await,
        None => Err(Error::Unauthenticated(
            "this call needs a researcher token: pass --token or set COBBLE_TOKEN (the project's operator makes one with `cobble-coordinator researcher add`)".into(),
        )),
    }
}

/// Who a blob call comes from.
#[derive(Debug, Clone)]
enum Caller {
    Researcher(Researcher),
    Host(HostIdentity),
}

impl Caller {
    /// A key for per-caller limits.
    fn key(&self) -> String {
        match self {
            Caller::Researcher(researcher) => format!("researcher {}", researcher.name),
            Caller::Host(host) => format!("host {}", host.host_id),
        }
    }
}

/// Blobs move for researchers (modules, inputs, results) and for hosts
/// (inputs, outputs); nobody else may store or read them.
async fn require_researcher_or_host(
    store: &Store,
    metadata: &MetadataMap,
) -> Result<Caller, Error> {
    if metadata.contains_key(HOST_ID_HEADER) {
        authenticate(store, metadata).await.map(Caller::Host)
    } else {
        require_researcher(store, metadata)
            .await
            .map(Caller::Researcher)
    }
}

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
    let host = store
        .authenticate_host(host_id, text(HOST_KEY_HEADER)?)
        .await?;
    store.limits().admit_host(host.host_id)?;
    Ok(host)
}
