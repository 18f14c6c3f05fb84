//! WorkerService: what volunteers' workers call.

use super::authenticate;
use crate::error::Error;
use crate::store::Store;
use crate::tracker::{Contact, Tracker};
use cobble_core::BlobHash;
use cobble_core::chunk::ChunkSet;
use cobble_proto::v1::{self as pb, worker_service_server::WorkerService};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Seconds a worker waits before asking again when there was no work.
const RETRY_AFTER_S: u32 = 2;
/// The longest a host's request for work is held waiting for some.
const MAX_WORK_WAIT_S: u32 = 30;
/// Peers named per blob: enough to download from several at once.
const PEERS_PER_REQUEST: usize = 16;
/// Blobs a heartbeat may announce.
const MAX_ANNOUNCED_BLOBS: usize = 64;
/// How long a host waits for peers before asking the super-seed again.
const SEED_RETRY_MS: u32 = 100;

#[derive(Debug, Clone)]
pub struct WorkerApi {
    pub store: Store,
    pub project_name: String,
    /// Who holds which blob, and how often each chunk was handed out.
    pub tracker: Arc<Tracker>,
}

/// How long a peer capability lasts: a download asks the tracker again
/// every few seconds, so a short life costs nothing.
const CAPABILITY_MS: i64 = 10 * 60 * 1000;

/// Where a host serves peers: the address its request came from, with the
/// port and certificate it announced; None if it serves none (or, being an
/// older worker, serves without TLS). Taking the address from the
/// connection means no host can point others at a third party.
fn peer_contact<T>(request: &Request<T>, port: u32, certificate: &[u8]) -> Option<Contact> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let certificate = <[u8; 32]>::try_from(certificate).ok()?;
    let ip = request.remote_addr()?.ip();
    Some(Contact {
        address: std::net::SocketAddr::new(ip, port).to_string(),
        certificate,
    })
}

/// A host reads from the coordinator only the blobs of units it holds.
pub(super) async fn require_needed(
    store: &Store,
    host_id: i64,
    hash: &BlobHash,
) -> Result<(), Status> {
    if store.host_needs_blob(host_id, hash).await? {
        Ok(())
    } else {
        Err(Status::from(Error::PermissionDenied(format!(
            "blob {hash} is not the module or an input of a unit this host holds"
        ))))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn get_project_info(
        &self,
        _request: Request<pb::ProjectInfoRequest>,
    ) -> Result<Response<pb::ProjectInfo>, Status> {
        Ok(Response::new(pb::ProjectInfo {
            name: self.project_name.clone(),
            signing_key: self.store.signing_key().verifying_key().to_bytes().to_vec(),
            code_signing_key: self
                .store
                .code_key()
                .map(|key| key.to_bytes().to_vec())
                .unwrap_or_default(),
        }))
    }

    async fn register_host(
        &self,
        request: Request<pb::RegisterHostRequest>,
    ) -> Result<Response<pb::RegisterHostResponse>, Status> {
        let attached = self.store.register_host(request.get_ref()).await?;
        Ok(Response::new(pb::RegisterHostResponse {
            account_id: attached.account_id,
            account_key: attached.new_account_key.unwrap_or_default(),
            host_id: attached.host_id,
            host_key: attached.host_key,
        }))
    }

    async fn request_work(
        &self,
        request: Request<pb::WorkRequest>,
    ) -> Result<Response<pb::WorkResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let wait = std::time::Duration::from_secs(u64::from(
            request.get_ref().wait_s.min(MAX_WORK_WAIT_S),
        ));
        let peer = request.remote_addr().map(|address| address.ip());
        let assignments = self
            .store
            .request_work_waiting(host, request.get_ref().slots, peer, wait)
            .await?;
        let retry_after_s = if assignments.is_empty() {
            RETRY_AFTER_S
        } else {
            0
        };
        Ok(Response::new(pb::WorkResponse {
            assignments,
            retry_after_s,
        }))
    }

    async fn report_result(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let status = self.store.report_result(host, request.get_ref()).await?;
        Ok(Response::new(pb::ReportResponse {
            status: status.as_str().to_string(),
            error: String::new(),
        }))
    }

    async fn report_results(
        &self,
        request: Request<pb::ReportBatch>,
    ) -> Result<Response<pb::ReportBatchResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let answers = self
            .store
            .report_results(host, &request.get_ref().reports)
            .await?;
        let results = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(status) => pb::ReportResponse {
                    status: status.as_str().to_string(),
                    error: String::new(),
                },
                Err(refused) => pb::ReportResponse {
                    status: "refused".to_string(),
                    error: Status::from(refused).message().to_string(),
                },
            })
            .collect();
        Ok(Response::new(pb::ReportBatchResponse { results }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let heartbeat = request.get_ref();
        self.store
            .record_progress(host, &heartbeat.progress)
            .await?;
        if let Some(delta) = &heartbeat.transfers {
            self.store.add_transfers(host, delta).await?;
        }
        let contact = peer_contact(&request, heartbeat.peer_port, &heartbeat.peer_certificate);
        let now = cobble_core::now_ms();
        let held: Vec<BlobHash> = heartbeat
            .held_blobs
            .iter()
            .take(MAX_ANNOUNCED_BLOBS)
            .filter_map(|raw| BlobHash::from_slice(raw).ok())
            .collect();
        self.tracker
            .note_holders(&held, host.host_id, contact, now)
            .await?;
        let abort_leases = self
            .store
            .leases_to_abort(host, &request.get_ref().running_leases)
            .await?;
        let credit = self.store.host_credit(host.host_id).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            abort_leases,
            credit: Some(credit),
        }))
    }

    async fn get_chunk_list(
        &self,
        request: Request<pb::ChunkListRequest>,
    ) -> Result<Response<pb::ChunkListResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let hash = BlobHash::from_slice(&request.get_ref().hash).map_err(Error::from)?;
        require_needed(&self.store, host.host_id, &hash).await?;
        let list = self.store.blobs.chunk_list(&hash).await?;
        Ok(Response::new(pb::ChunkListResponse {
            hashes: list.to_wire(),
        }))
    }

    async fn get_peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let hash = BlobHash::from_slice(&request.get_ref().hash).map_err(Error::from)?;
        let ask = request.get_ref();
        // Without a certificate of its own the caller could not use a
        // capability (peers bind it to the certificate); it gets none, and
        // no peers either.
        let Ok(certificate) = <[u8; 32]>::try_from(ask.peer_certificate.as_slice()) else {
            return Ok(Response::new(pb::PeersResponse::default()));
        };
        // The tracker vouches only for the blobs of a unit the host holds.
        if !self
            .store
            .lease_needs_blob(host.host_id, &ask.lease_id, &hash)
            .await?
        {
            return Err(Status::from(Error::PermissionDenied(format!(
                "lease {:?} is not this host's, or its unit does not need blob {hash}",
                ask.lease_id
            ))));
        }
        // Invariant 8: never name a host that holds a result of the same
        // unit, whichever blob is asked about.
        let mut exclude = self
            .store
            .hosts_sharing_unit(&request.get_ref().lease_id)
            .await?;
        exclude.insert(host.host_id);
        let now = cobble_core::now_ms();
        let peers = self
            .tracker
            .recent_peers(&hash, &exclude, PEERS_PER_REQUEST, now)
            .await?
            .into_iter()
            .map(|holder| pb::Peer {
                host_id: holder.host_id,
                address: holder.contact.address,
                certificate: holder.contact.certificate.to_vec(),
            })
            .collect();
        let capability = cobble_core::capability::PeerCapability {
            blob: hash,
            host_id: host.host_id,
            certificate,
            expires_ms: now + CAPABILITY_MS,
        }
        .sign(self.store.signing_key());
        // Asking means fetching: from now on this host is a holder others
        // can trade with, even before it has the whole blob.
        let contact = peer_contact(&request, ask.peer_port, &ask.peer_certificate);
        self.tracker
            .note_holders(&[hash], host.host_id, contact, now)
            .await?;
        Ok(Response::new(pb::PeersResponse { peers, capability }))
    }

    async fn get_seed_chunk(
        &self,
        request: Request<pb::SeedChunkRequest>,
    ) -> Result<Response<pb::SeedChunkResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        let ask = request.get_ref();
        let hash = BlobHash::from_slice(&ask.hash).map_err(Error::from)?;
        require_needed(&self.store, host.host_id, &hash).await?;
        let list = self.store.blobs.chunk_list(&hash).await?;
        let have = ChunkSet::from_wire(&ask.have, list.len()).ok_or_else(|| {
            Status::from(Error::InvalidArgument(format!(
                "the chunk map must have one bit for each of the blob's {} chunks",
                list.len()
            )))
        })?;
        let chosen = self
            .tracker
            .next_seed_chunk(&hash, list.len(), &have, ask.peers_stalled)
            .await?;
        let response = match chosen {
            Some(index) => {
                let data = self
                    .store
                    .blobs
                    .read_chunk(&hash, list.size(), index)
                    .await?;
                self.store.blobs.pace(data.len()).await;
                pb::SeedChunkResponse {
                    index: Some(index as u32),
                    data,
                    retry_after_ms: 0,
                }
            }
            None => pb::SeedChunkResponse {
                index: None,
                data: Vec::new(),
                retry_after_ms: SEED_RETRY_MS,
            },
        };
        Ok(Response::new(response))
    }
}
