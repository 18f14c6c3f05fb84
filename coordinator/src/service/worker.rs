//! WorkerService: what volunteers' workers call.

use super::authenticate;
use crate::store::Store;
use cobble_proto::v1::{self as pb, worker_service_server::WorkerService};
use tonic::{Request, Response, Status};

/// Seconds a worker waits before asking again when there was no work.
const RETRY_AFTER_S: u32 = 2;

#[derive(Debug, Clone)]
pub struct WorkerApi {
    pub store: Store,
    pub project_name: String,
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
        let assignments = self
            .store
            .request_work(host, request.get_ref().slots)
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
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let host = authenticate(&self.store, request.metadata()).await?;
        self.store
            .record_progress(host, &request.get_ref().progress)
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
}
