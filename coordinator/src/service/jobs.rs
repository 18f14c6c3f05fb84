//! JobService: what researchers call.

use super::require_researcher;
use crate::error::Error;
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
        let researcher = require_researcher(&self.store, request.metadata()).await?;
        let spec = request.get_ref().spec.as_ref().ok_or_else(|| {
            Status::from(Error::InvalidArgument("SubmitJob needs a spec".to_string()))
        })?;
        let (job_id, units) = self.store.submit_job(spec, &researcher).await?;
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
        let researcher = require_researcher(&self.store, request.metadata()).await?;
        let job_id = request.get_ref().job_id;
        self.store.authorize_job(&researcher, job_id).await?;
        let results = self.store.job_results(job_id).await?;
        // What the owner was shown, the owner may download.
        let outputs: Vec<(Vec<u8>, i64)> = results
            .units
            .iter()
            .flat_map(|unit| {
                unit.stdout
                    .iter()
                    .chain(unit.files.iter().filter_map(|f| f.blob.as_ref()))
            })
            .map(|blob| (blob.hash.clone(), blob.size as i64))
            .collect();
        if !researcher.admin {
            self.store.grant_blobs(&researcher, &outputs, false).await?;
        }
        self.store
            .audit(
                &researcher.name,
                "results",
                Some(job_id),
                &format!("{} outputs", outputs.len()),
            )
            .await?;
        Ok(Response::new(results))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let researcher = require_researcher(&self.store, request.metadata()).await?;
        let job_id = request.get_ref().job_id;
        self.store.authorize_job(&researcher, job_id).await?;
        let status = self.store.cancel_job(job_id).await?;
        self.store
            .audit(&researcher.name, "cancel", Some(job_id), "")
            .await?;
        Ok(Response::new(pb::CancelJobResponse {
            status: Some(status),
        }))
    }
}
