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
            return Err(super::busy(
                tonic::Code::Unavailable,
                "this peer's owner is using the machine; ask another peer",
            ));
        }
        let Ok(_slot) = self.sharing.slots.try_acquire() else {
            return Err(super::busy(
                tonic::Code::ResourceExhausted,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{Activity, SuspendReason};
    use crate::peer::{BUSY_METADATA, SharingPrefs};

    /// A peer whose owner is at the machine says so in a way the
    /// downloader reads without parsing words: over a real socket, the
    /// refusal carries the busy marker, and a plain miss does not.
    #[tokio::test]
    async fn a_busy_peer_marks_its_refusal_for_the_downloader() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_owner, activity) = tokio::sync::watch::channel(Activity {
            suspended: Some(SuspendReason::UserActive),
            other_load: 90.0,
        });
        let prefs = SharingPrefs {
            upload_slots: 1,
            max_bytes_sec_up: 0.0,
            serve_while_in_use: false,
        };
        let sharing = Arc::new(Sharing::new(
            dir.path().to_path_buf(),
            prefs,
            activity,
            Arc::default(),
            None,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(sharing, listener));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut peer = pb::peer_service_client::PeerServiceClient::new(channel);
        let refused = peer
            .get_chunk(pb::ChunkRequest {
                hash: vec![1; 32],
                index: 0,
            })
            .await
            .expect_err("a busy peer serves nothing");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            refused.metadata().contains_key(BUSY_METADATA),
            "{refused:?}"
        );
        let bad = peer
            .get_chunk(pb::ChunkRequest {
                hash: vec![1; 3],
                index: 0,
            })
            .await
            .expect_err("a malformed hash");
        assert!(!bad.metadata().contains_key(BUSY_METADATA), "{bad:?}");
        server.abort();
    }
}
