//! BlobService: chunked upload and download of content-addressed blobs.

use super::{Caller, require_researcher_or_host};
use crate::error::Error;
use crate::store::Store;
use cobble_core::BlobHash;
use cobble_proto::v1::{self as pb, blob_service_server::BlobService};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Hashes one HasBlobs call may ask about.
const MAX_HAS_BLOBS: usize = 10_000;

/// Bytes per download message: well under gRPC's 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Uploads one caller may have open at once: each holds a socket and a
/// file, and a host stalling a thousand of them would use up the
/// coordinator's file descriptors.
pub const MAX_OPEN_UPLOADS: usize = 8;
/// An upload that sends nothing for this long is dropped, with its file.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BlobApi {
    pub store: Store,
    /// Largest blob accepted, so one upload cannot fill the disk.
    pub max_blob_bytes: u64,
    /// Open uploads per caller.
    pub open_uploads: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open upload, counted against its caller until dropped.
struct UploadSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl UploadSlot {
    fn take(open: &Arc<Mutex<HashMap<String, usize>>>, caller: String) -> Result<Self, Status> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(caller.clone()).or_default();
        if *count >= MAX_OPEN_UPLOADS {
            return Err(Status::from(Error::ResourceExhausted(format!(
                "{caller} already has {MAX_OPEN_UPLOADS} uploads open; finish one first"
            ))));
        }
        *count += 1;
        Ok(UploadSlot {
            open: open.clone(),
            caller,
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.open.lock()
            && let Some(count) = counts.get_mut(&self.caller)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

/// The next message of an upload, or an error if the caller went quiet.
async fn next_chunk(
    stream: &mut Streaming<pb::BlobChunk>,
) -> Result<Option<pb::BlobChunk>, Status> {
    match tokio::time::timeout(UPLOAD_IDLE, stream.message()).await {
        Ok(next) => next,
        Err(_) => Err(Error::TimedOut(format!(
            "the upload sent nothing for {} s",
            UPLOAD_IDLE.as_secs()
        ))
        .into()),
    }
}

#[tonic::async_trait]
impl BlobService for BlobApi {
    async fn upload_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::UploadBlobResponse>, Status> {
        let caller = require_researcher_or_host(&self.store, request.metadata()).await?;
        let _slot = UploadSlot::take(&self.open_uploads, caller.key())?;
        let blobs = &self.store.blobs;
        let mut stream = request.into_inner();
        let first = next_chunk(&mut stream)
            .await?
            .ok_or_else(|| Status::from(Error::InvalidArgument("empty upload".to_string())))?;
        let expected = first.expected.clone().ok_or_else(|| {
            Status::from(Error::InvalidArgument(
                "the first chunk must carry the expected hash and size".to_string(),
            ))
        })?;
        let hash = BlobHash::from_slice(&expected.hash).map_err(Error::from)?;
        if expected.size > self.max_blob_bytes {
            return Err(Status::from(Error::ResourceExhausted(format!(
                "blob of {} bytes exceeds this coordinator's limit of {} bytes",
                expected.size, self.max_blob_bytes
            ))));
        }
        if let Caller::Researcher(researcher) = &caller {
            self.store
                .check_upload_quota(researcher, &hash, expected.size)
                .await?;
        }
        if let Caller::Host(host) = &caller {
            // Hosts upload outputs, and only while they hold a unit: a
            // fresh account must not be free storage.
            match self.store.output_allowance(host.host_id).await? {
                None => {
                    return Err(Status::from(Error::PermissionDenied(
                        "hosts upload only the outputs of units they hold; this host holds none"
                            .to_string(),
                    )));
                }
                Some(allowed) if expected.size > allowed => {
                    return Err(Status::from(Error::ResourceExhausted(format!(
                        "an output of {} bytes exceeds the {allowed}-byte limit of the units this host holds",
                        expected.size
                    ))));
                }
                Some(_) => {}
            }
        }
        if blobs.size_of(&hash).await? == Some(expected.size) {
            blobs.touch(&hash).await?;
            while next_chunk(&mut stream).await?.is_some() {}
            if let Caller::Researcher(researcher) = &caller {
                self.store
                    .record_upload(researcher, &hash, expected.size)
                    .await?;
            }
            return Ok(Response::new(pb::UploadBlobResponse {
                blob: Some(expected),
                already_present: true,
            }));
        }
        // Dropped on any early return, the writer removes its file.
        let mut writer = blobs.writer().await?;
        let mut chunk = Some(first);
        while let Some(message) = chunk {
            if writer.written() + message.data.len() as u64 > expected.size {
                return Err(Status::from(Error::InvalidArgument(format!(
                    "upload is longer than its declared {} bytes",
                    expected.size
                ))));
            }
            writer.write(&message.data).await?;
            chunk = next_chunk(&mut stream).await?;
        }
        writer.finish(blobs, &hash, expected.size).await?;
        if let Caller::Researcher(researcher) = &caller {
            self.store
                .record_upload(researcher, &hash, expected.size)
                .await?;
        }
        Ok(Response::new(pb::UploadBlobResponse {
            blob: Some(expected),
            already_present: false,
        }))
    }

    type GetBlobStream = Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

    async fn get_blob(
        &self,
        request: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let caller = require_researcher_or_host(&self.store, request.metadata()).await?;
        let hash = BlobHash::from_slice(&request.get_ref().hash).map_err(Error::from)?;
        if let Caller::Researcher(researcher) = &caller {
            // A researcher reads what they uploaded and the outputs of their
            // own jobs, not another researcher's data.
            if !self.store.may_download(researcher, &hash).await? {
                return Err(Status::from(Error::PermissionDenied(format!(
                    "blob {hash} is not an upload or output of yours (list your job's results first)"
                ))));
            }
            self.store
                .audit(&researcher.name, "download", None, &hash.to_hex())
                .await?;
        }
        if let Caller::Host(host) = &caller {
            super::worker::require_needed(&self.store, host.host_id, &hash).await?;
        }
        let Some(size) = self.store.blobs.size_of(&hash).await? else {
            // A small output sent inline: one chunk from its row.
            let data = self
                .store
                .small_blob(&hash)
                .await?
                .ok_or_else(|| Error::NotFound(format!("blob {hash} is not stored here")))?;
            let chunk = pb::BlobChunk {
                expected: Some(pb::BlobRef {
                    hash: hash.0.to_vec(),
                    size: data.len() as u64,
                    chunk_root: Vec::new(),
                }),
                data,
            };
            return Ok(Response::new(Box::pin(tokio_stream::iter([Ok(chunk)]))));
        };
        // Read a piece at a time as the caller takes them; tonic ends the
        // stream with the first error's status.
        let chunks = self
            .store
            .blobs
            .pieces(hash, size, CHUNK_BYTES as u64)
            .map(move |piece| {
                let (offset, data) = piece.map_err(Status::from)?;
                Ok(pb::BlobChunk {
                    expected: (offset == 0).then(|| pb::BlobRef {
                        hash: hash.0.to_vec(),
                        size,
                        chunk_root: Vec::new(),
                    }),
                    data,
                })
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn has_blobs(
        &self,
        request: Request<pb::HasBlobsRequest>,
    ) -> Result<Response<pb::HasBlobsResponse>, Status> {
        require_researcher_or_host(&self.store, request.metadata()).await?;
        let hashes = &request.get_ref().hashes;
        if hashes.len() > MAX_HAS_BLOBS {
            // Answering for some of them would read as "the rest are here".
            return Err(Error::InvalidArgument(format!(
                "asked about {} blobs; at most {MAX_HAS_BLOBS} per call",
                hashes.len()
            ))
            .into());
        }
        let mut missing = Vec::new();
        for raw in hashes {
            let hash = BlobHash::from_slice(raw).map_err(Error::from)?;
            if self.store.blob_size(&hash).await?.is_none() {
                missing.push(raw.clone());
            }
        }
        Ok(Response::new(pb::HasBlobsResponse { missing }))
    }
}
