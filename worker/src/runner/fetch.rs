//! The work buffer: leases enough units ahead that a slot never waits on
//! the network. Units are fetched when fewer than `work_buf_min_units` wait
//! for a slot, up to `work_buf_max_units` waiting, and each is verified,
//! journaled and its blobs fetched before a slot takes it.

use super::{Worker, backoff, client_error};
use crate::tasks::TaskState;
use cobble_proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How often the buffer is checked even when no slot frees up.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// How long the coordinator may hold a request for work when it has none,
/// so that an idle worker asks twice a minute yet hears of work at once.
const WORK_WAIT_S: u32 = 25;

/// A verified unit waiting for a slot.
pub(super) struct Queued {
    pub manifest: pb::Manifest,
    /// When the assignment arrived, for the time-to-first-instruction log.
    pub received: Instant,
}

/// How many units to ask for: none while every idle slot has a unit
/// waiting and at least `min` wait, else enough to fill every slot and
/// `max` waiting ones. `in_hand` counts the waiting units too.
pub(super) fn units_to_request(
    slots: u32,
    in_hand: usize,
    waiting: usize,
    min: u32,
    max: u32,
) -> u32 {
    let busy = in_hand.saturating_sub(waiting);
    let idle_slots = (slots as usize).saturating_sub(busy);
    if waiting >= min as usize && waiting >= idle_slots {
        return 0;
    }
    let wanted = slots as usize + max as usize;
    wanted.saturating_sub(in_hand) as u32
}

impl Worker {
    /// Verifies a leased unit, journals it and queues it for a slot. A unit
    /// whose signature fails is refused here, before anything of it is used.
    pub(super) async fn enqueue(
        self: &Arc<Self>,
        assignment: pb::Assignment,
        queue: &UnboundedSender<Queued>,
    ) {
        let received = Instant::now();
        let manifest = match cobble_core::manifest::verify(&assignment, &self.project_key) {
            Ok(manifest) => manifest,
            Err(error) => {
                // Only the lease id is read from the unverified bytes, to tell
                // the coordinator which unit was refused.
                tracing::error!(%error, "refusing unit with a bad signature");
                if let Ok(unverified) =
                    <pb::Manifest as prost::Message>::decode(assignment.manifest.as_slice())
                {
                    let request = pb::ReportRequest {
                        lease_id: unverified.lease_id.clone(),
                        outcome: Some(client_error("bad_signature", &error.to_string())),
                    };
                    self.report(&unverified, request).await;
                }
                return;
            }
        };
        if let Err(error) = self.check_code_signature(&manifest) {
            // The manifest is the online key's word; the module must also be
            // the offline code key's, or a stolen coordinator could run
            // anything here.
            tracing::error!(%error, "refusing unit: its module is not signed by the project's code-signing key");
            let request = pb::ReportRequest {
                lease_id: manifest.lease_id.clone(),
                outcome: Some(client_error("unsigned_code", &error.to_string())),
            };
            self.report(&manifest, request).await;
            return;
        }
        if let Err(error) = self
            .journal
            .record_assignment(&manifest.lease_id, &assignment)
        {
            // Without a journal entry a crash would lose the unit; run it anyway.
            tracing::warn!(%error, "cannot journal the assignment");
        }
        self.tasks.add(&manifest);
        self.prefetch(&manifest);
        if queue.send(Queued { manifest, received }).is_err() {
            tracing::warn!("work queue closed; the unit stays in the journal");
        }
    }

    /// With a pinned code-signing key, the unit's module must carry its
    /// signature; without one, any module the manifest names will do.
    fn check_code_signature(&self, manifest: &pb::Manifest) -> Result<(), cobble_core::Error> {
        let Some(code_key) = &self.code_key else {
            return Ok(());
        };
        let module = manifest
            .module
            .as_ref()
            .ok_or_else(|| cobble_core::Error::UnsignedCode("the unit names no module".into()))?;
        let hash = cobble_core::BlobHash::from_slice(&module.hash)?;
        cobble_core::code_signing::verify(&hash, &manifest.module_signature, code_key)
    }

    /// Starts downloading a queued unit's blobs now, so they are in the
    /// cache when a slot takes it. Failures are left for the slot to retry.
    fn prefetch(self: &Arc<Self>, manifest: &pb::Manifest) {
        let blobs: Vec<pb::BlobRef> = cobble_core::manifest::blobs(manifest).cloned().collect();
        let (worker, deadline_ms) = (self.clone(), manifest.deadline_ms);
        let lease_id = manifest.lease_id.clone();
        tokio::spawn(async move {
            for blob in blobs {
                if let Err(error) = worker.prefetch_blob(&blob, &lease_id, deadline_ms).await {
                    tracing::debug!(%error, "prefetch failed; the slot will retry");
                }
            }
        });
    }

    /// Keeps the buffer filled until the worker stops.
    pub(super) async fn fetch_loop(self: Arc<Self>, queue: UnboundedSender<Queued>) {
        if self.hooks.serve_only() {
            return std::future::pending().await;
        }
        let mut failures = 0;
        loop {
            let in_hand = self.tasks.active_leases().len();
            let waiting = self.tasks.count(TaskState::Queued);
            let wanted = if self.finishing.load(std::sync::atomic::Ordering::Relaxed) {
                0
            } else {
                units_to_request(
                    self.slots,
                    in_hand,
                    waiting,
                    self.prefs.work_buf_min_units,
                    self.prefs.work_buf_max_units,
                )
            };
            if wanted == 0 {
                tokio::select! {
                    () = self.slot_freed.notified() => {}
                    () = tokio::time::sleep(RECHECK_EVERY) => {}
                }
                continue;
            }
            match self
                .client()
                .request_work(self.authorized(pb::WorkRequest {
                    slots: wanted,
                    wait_s: WORK_WAIT_S,
                }))
                .await
            {
                Ok(response) => {
                    failures = 0;
                    let response = response.into_inner();
                    if response.assignments.is_empty() {
                        let wait = Duration::from_secs(u64::from(response.retry_after_s.max(1)));
                        tokio::time::sleep(wait).await;
                    }
                    for assignment in response.assignments {
                        self.enqueue(assignment, &queue).await;
                    }
                }
                Err(status) => {
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(%status, "requesting work failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::units_to_request;

    #[test]
    fn fills_idle_slots_and_the_buffer_only_when_it_runs_low() {
        // (slots, in hand, waiting, min, max) -> units to ask for.
        let cases = [
            ((2, 0, 0, 1, 2), 4), // start: both slots and the buffer
            ((2, 2, 0, 1, 2), 2), // both running, nothing waiting
            ((2, 3, 1, 1, 2), 0), // enough waiting
            ((2, 3, 1, 2, 3), 2), // below a larger minimum
            ((1, 0, 0, 0, 0), 1), // no buffer still fills the slot
            ((1, 1, 0, 0, 0), 0),
        ];
        for ((slots, in_hand, waiting, min, max), expected) in cases {
            assert_eq!(
                units_to_request(slots, in_hand, waiting, min, max),
                expected,
                "slots {slots}, in hand {in_hand}, waiting {waiting}, min {min}, max {max}"
            );
        }
    }
}
