//! Reports go to the coordinator through one queue: while a call is in
//! flight, units that finish meanwhile wait and go together in the next
//! (`ReportResults`, up to 64), so a worker with many slots sends one call
//! for several units, and one with a slot or two sends each report as it
//! comes, as before.

use super::{Worker, is_transient_transfer, with_retry};
use cobble_proto::v1 as pb;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

/// As many reports as the coordinator takes in one call.
const MAX_BATCH: usize = 64;

/// One report waiting to be sent, and who waits for it.
pub(super) struct Pending {
    pub manifest: pb::Manifest,
    pub request: pb::ReportRequest,
    pub sent: oneshot::Sender<()>,
}

/// The queue's sending end, held by the worker.
pub(super) type Reports = mpsc::UnboundedSender<Pending>;

/// Sends what is queued, a batch at a time, until the worker is dropped.
pub(super) async fn send_reports(worker: Arc<Worker>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        send_batch(&worker, batch).await;
    }
}

/// Sends one batch, retrying through outages until the last of its leases
/// is over; each waiter hears back once the batch is answered or dropped.
async fn send_batch(worker: &Worker, batch: Vec<Pending>) {
    let deadline_ms = batch
        .iter()
        .map(|p| p.manifest.deadline_ms)
        .max()
        .unwrap_or(0);
    let request = pb::ReportBatch {
        reports: batch.iter().map(|p| p.request.clone()).collect(),
    };
    let sent = with_retry(deadline_ms, "reporting", || async {
        worker
            .client()
            .report_results(worker.authorized(request.clone()))
            .await
            .map_err(cobble_client::Error::Rpc)
    })
    .await;
    match sent {
        Ok(response) => {
            let answers = response.into_inner().results;
            for (pending, answer) in batch
                .iter()
                .zip(answers.iter().map(Some).chain(std::iter::repeat(None)))
            {
                match answer {
                    Some(answer) if answer.status != "refused" => {
                        tracing::info!(unit_id = pending.manifest.unit_id, status = %answer.status, "reported");
                        worker
                            .reported_since_heartbeat
                            .store(true, Ordering::Relaxed);
                    }
                    Some(answer) => tracing::warn!(
                        unit_id = pending.manifest.unit_id,
                        error = %answer.error,
                        "report refused; dropping the result"
                    ),
                    None => tracing::warn!(
                        unit_id = pending.manifest.unit_id,
                        "the coordinator did not answer for this report; dropping the result"
                    ),
                }
            }
        }
        Err(cobble_client::Error::Rpc(status)) if status.code() == tonic::Code::Unimplemented => {
            // A coordinator from before batches: one call per report.
            for pending in &batch {
                worker
                    .report_one(&pending.manifest, pending.request.clone())
                    .await;
            }
        }
        Err(error) => {
            let transient = is_transient_transfer(&error);
            tracing::warn!(
                count = batch.len(),
                %error,
                transient,
                "reports not taken; dropping the results"
            );
        }
    }
    for pending in batch {
        let _ = pending.sent.send(());
    }
}
