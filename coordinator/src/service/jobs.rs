//! JobService: what researchers call.

use super::require_researcher;
use crate::store::Store;
use cobble_proto::v1::{self as pb, job_service_server::JobService};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct JobApi {
    pub store: Store,
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        require_researcher(&self.store, request.metadata())?;
        let spec = request
            .get_ref()
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("SubmitJob needs a spec"))?;
        let (job_id, units) = self.store.submit_job(spec).await?;
        Ok(Response::new(pb::SubmitJobResponse { job_id, units }))
    }

    async fn get_job_status(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        Ok(Response::new(
            self.store.job_status(request.get_ref().job_id).await?,
        ))
    }

    async fn get_job_results(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JobResults>, Status> {
        require_researcher(&self.store, request.metadata())?;
        Ok(Response::new(
            self.store.job_results(request.get_ref().job_id).await?,
        ))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        require_researcher(&self.store, request.metadata())?;
        let status = self.store.cancel_job(request.get_ref().job_id).await?;
        Ok(Response::new(pb::CancelJobResponse {
            status: Some(status),
        }))
    }
}
