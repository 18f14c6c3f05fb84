//! The peer service: chunk maps and chunks of this worker's blobs, over
//! TLS, to callers holding a capability for the blob, within a few upload
//! slots and the upload bandwidth preference. A caller turned away (busy,
//! or the owner is at the machine) tries another peer or the coordinator.

use super::Sharing;
use cobble_core::BlobHash;
use cobble_core::capability::{self, PeerCapability};
use cobble_proto::v1::{self as pb, peer_service_server::PeerService};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct PeerApi {
    sharing: Arc<Sharing>,
}

impl PeerApi {
    /// The blob asked for, if the caller may have it: a capability for it,
    /// signed by the project key, unexpired, and bound to the certificate
    /// the caller connected with. Checked before anything else, so a
    /// stranger learns nothing, not even whether this worker holds it.
    fn authorize<T>(&self, request: &Request<T>, raw_hash: &[u8]) -> Result<BlobHash, Status> {
        let denied = |why: &str| Status::permission_denied(format!("{why}; ask the tracker"));
        let presented = request
            .metadata()
            .get_bin(capability::METADATA_KEY)
            .and_then(|value| value.to_bytes().ok())
            .ok_or_else(|| denied("no capability for this blob"))?;
        let granted = PeerCapability::verify(
            &presented,
            &self.sharing.tls.project_key,
            cobble_core::now_ms(),
        )
        .map_err(|e| denied(&e.to_string()))?;
        let caller = cobble_tls::client_fingerprint(request)
            .ok_or_else(|| denied("no client certificate"))?;
        if caller.0 != granted.certificate {
            return Err(denied("the capability was given to another host"));
        }
        if granted.blob.0.as_slice() != raw_hash {
            return Err(denied("the capability is for another blob"));
        }
        Ok(granted.blob)
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn get_chunk_map(
        &self,
        request: Request<pb::ChunkMapRequest>,
    ) -> Result<Response<pb::ChunkMap>, Status> {
        let hash = self.authorize(&request, &request.get_ref().hash)?;
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
        let hash = self.authorize(&request, &request.get_ref().hash)?;
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

/// Serves peers over TLS on `listener` until the returned future is
/// dropped.
pub async fn serve(sharing: Arc<Sharing>, listener: TcpListener) {
    let config = match cobble_tls::ServerCert::new(&sharing.tls.identity)
        .and_then(|cert| cert.config(true))
    {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "cannot serve peers");
            return;
        }
    };
    let (incoming, handshakes) = cobble_tls::accept(TcpListenerStream::new(listener), config);
    let result = tonic::transport::Server::builder()
        .add_service(pb::peer_service_server::PeerServiceServer::new(PeerApi {
            sharing,
        }))
        .serve_with_incoming(incoming)
        .await;
    handshakes.abort();
    if let Err(error) = result {
        tracing::error!(%error, "the peer service stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{Activity, SuspendReason};
    use crate::peer::{BUSY_METADATA, PeerTls, SharingPrefs};
    use cobble_tls::{Fingerprint, Identity, Seen, Trust};
    use pb::peer_service_client::PeerServiceClient;

    fn identity() -> Identity {
        Identity::self_signed(&["cobble-peer".to_string()]).expect("identity")
    }

    async fn client(
        port: u16,
        server: Fingerprint,
        caller: Option<&Identity>,
    ) -> Result<PeerServiceClient<tonic::transport::Channel>, String> {
        let config = cobble_tls::client_config(Trust::Pinned(server), Seen::default(), caller)
            .expect("config");
        cobble_tls::connect_channel(&format!("127.0.0.1:{port}"), config, None, |e| e)
            .await
            .map(PeerServiceClient::new)
            .map_err(|e| e.to_string())
    }

    fn chunk_request(hash: &BlobHash, capability: Option<&[u8]>) -> Request<pb::ChunkRequest> {
        let mut request = Request::new(pb::ChunkRequest {
            hash: hash.0.to_vec(),
            index: 0,
        });
        if let Some(capability) = capability {
            request.metadata_mut().insert_bin(
                capability::METADATA_KEY,
                tonic::metadata::MetadataValue::from_bytes(capability),
            );
        }
        request
    }

    /// Over real sockets and TLS: a chunk goes only to a caller holding a
    /// capability for that blob, signed by the project key, unexpired and
    /// bound to the certificate it connected with; every other caller gets
    /// PermissionDenied and nothing else. A caller without a certificate, or
    /// pinning another server certificate, does not get a connection.
    #[tokio::test]
    async fn chunks_go_only_to_callers_with_a_capability() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blob = vec![42u8; 1000];
        let hash = BlobHash::of(&blob);
        std::fs::write(dir.path().join(hash.to_hex()), &blob).expect("blob");
        let project = cobble_core::manifest::generate_signing_key();
        let (owner, activity) = tokio::sync::watch::channel(Activity {
            suspended: None,
            other_load: 0.0,
        });
        let server_identity = identity();
        let server_fingerprint = server_identity.fingerprint();
        let sharing = Arc::new(Sharing::new(
            PeerTls {
                identity: server_identity,
                project_key: project.verifying_key(),
            },
            dir.path().to_path_buf(),
            SharingPrefs {
                upload_slots: 1,
                max_bytes_sec_up: 0.0,
                serve_while_in_use: false,
            },
            activity,
            Arc::default(),
            None,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(serve(sharing, listener));

        let (alice, mallory) = (identity(), identity());
        let now = cobble_core::now_ms();
        let grant = |blob: BlobHash, holder: &Identity, expires_ms: i64, key| {
            PeerCapability {
                blob,
                host_id: 5,
                certificate: holder.fingerprint().0,
                expires_ms,
            }
            .sign(key)
        };
        let valid = grant(hash, &alice, now + 60_000, &project);
        let mut peer = client(port, server_fingerprint, Some(&alice))
            .await
            .expect("alice connects");
        let stranger_key = cobble_core::manifest::generate_signing_key();
        let refused: Vec<(&str, Option<Vec<u8>>)> = vec![
            ("no capability", None),
            ("garbage", Some(vec![0u8; 7])),
            (
                "signed by another key",
                Some(grant(hash, &alice, now + 60_000, &stranger_key)),
            ),
            ("expired", Some(grant(hash, &alice, now - 1, &project))),
            (
                "another blob",
                Some(grant(
                    BlobHash::of(b"other"),
                    &alice,
                    now + 60_000,
                    &project,
                )),
            ),
            (
                "another host's certificate",
                Some(grant(hash, &mallory, now + 60_000, &project)),
            ),
        ];
        for (case, capability) in &refused {
            let status = peer
                .get_chunk(chunk_request(&hash, capability.as_deref()))
                .await
                .expect_err(case);
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{case}: {status:?}"
            );
            assert!(!status.metadata().contains_key(BUSY_METADATA), "{case}");
            let mut map = Request::new(pb::ChunkMapRequest {
                hash: hash.0.to_vec(),
            });
            if let Some(capability) = capability {
                map.metadata_mut().insert_bin(
                    capability::METADATA_KEY,
                    tonic::metadata::MetadataValue::from_bytes(capability),
                );
            }
            let status = peer.get_chunk_map(map).await.expect_err(case);
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{case}: {status:?}"
            );
        }
        // Alice's capability copied by Mallory, who connects with her own
        // certificate: refused.
        let mut stolen = client(port, server_fingerprint, Some(&mallory))
            .await
            .expect("mallory connects");
        let status = stolen
            .get_chunk(chunk_request(&hash, Some(&valid)))
            .await
            .expect_err("a stolen capability");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

        // The real thing: served.
        let served = peer
            .get_chunk(chunk_request(&hash, Some(&valid)))
            .await
            .expect("a capability holder is served")
            .into_inner();
        assert_eq!(served.data, blob);

        // Busy (the owner is at the machine): the holder is told so, marked
        // for the downloader, which does not parse words.
        owner
            .send(Activity {
                suspended: Some(SuspendReason::UserActive),
                other_load: 90.0,
            })
            .expect("activity");
        let busy = peer
            .get_chunk(chunk_request(&hash, Some(&valid)))
            .await
            .expect_err("a busy peer serves nothing");
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        assert!(busy.metadata().contains_key(BUSY_METADATA), "{busy:?}");

        // No client certificate: no connection (or no call) at all.
        if let Ok(mut anonymous) = client(port, server_fingerprint, None).await {
            anonymous
                .get_chunk(chunk_request(&hash, Some(&valid)))
                .await
                .expect_err("a caller without a certificate");
        }
        // A caller pinning another certificate does not talk to this server.
        let error = client(port, identity().fingerprint(), Some(&alice))
            .await
            .expect_err("wrong pin");
        assert!(error.contains("certificate changed"), "{error}");
        server.abort();
    }
}
