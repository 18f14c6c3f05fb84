//! The peer service: chunk maps and chunks of this worker's blobs, asked
//! for by hash only, within a few upload slots and the upload bandwidth
//! preference. A caller turned away (busy, or the owner is at the machine)
//! tries another peer or the coordinator.

use super::Sharing;
use cobble_core::BlobHash;
use cobble_proto::v1::{self as pb, peer_service_server::PeerService};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct PeerApi {
    sharing: Arc<Sharing>,
}

fn parse_hash(raw: &[u8]) -> Result<BlobHash, Status> {
    BlobHash::from_slice(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn get_chunk_map(
        &self,
        request: Request<pb::ChunkMapRequest>,
    ) -> Result<Response<pb::ChunkMap>, Status> {
        let hash = parse_hash(&request.get_ref().hash)?;
        let have = self
            .sharing
            .chunk_map(&hash)
            .ok_or_else(|| Status::not_found(format!("this peer holds no chunk of {hash}")))?;
        Ok(Response::new(pb::ChunkMap {
            chunk_count: have.len() as u64,
            have: have.to_wire(),
        }))
    }

    async fn get_chunk(
        &self,
        request: Request<pb::ChunkRequest>,
    ) -> Result<Response<pb::ChunkData>, Status> {
        let hash = parse_hash(&request.get_ref().hash)?;
        if !self.sharing.may_serve() {
            return Err(Status::unavailable(
                "this peer's owner is using the machine; ask another peer",
            ));
        }
        let Ok(_slot) = self.sharing.slots.try_acquire() else {
            return Err(Status::resource_exhausted(
                "every upload slot of this peer is busy; ask another peer",
            ));
        };
        let index = request.get_ref().index as usize;
        let data = self.sharing.read_chunk(&hash, index).await.ok_or_else(|| {
            Status::not_found(format!("this peer does not hold chunk {index} of {hash}"))
        })?;
        self.sharing.throttle(data.len()).await;
        self.sharing
            .transfers
            .served_to_peers
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let have = self
            .sharing
            .chunk_map(&hash)
            .map(|map| map.to_wire())
            .unwrap_or_default();
        Ok(Response::new(pb::ChunkData { data, have }))
    }
}

/// Serves peers on `listener` until the returned future is dropped.
pub async fn serve(sharing: Arc<Sharing>, listener: TcpListener) {
    let result = tonic::transport::Server::builder()
        .add_service(pb::peer_service_server::PeerServiceServer::new(PeerApi {
            sharing,
        }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the peer service stopped");
    }
}
