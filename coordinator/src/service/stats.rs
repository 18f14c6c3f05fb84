//! StatsService: the public leaderboard and the project's transfer totals.

use crate::store::Store;
use cobble_proto::v1::{self as pb, stats_service_server::StatsService};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct StatsApi {
    pub store: Store,
}

#[tonic::async_trait]
impl StatsService for StatsApi {
    async fn get_leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> Result<Response<pb::Leaderboard>, Status> {
        let request = request.get_ref();
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit
        };
        Ok(Response::new(
            self.store.leaderboard(&request.kind, limit).await?,
        ))
    }

    async fn get_transfer_stats(
        &self,
        _request: Request<pb::TransferStatsRequest>,
    ) -> Result<Response<pb::TransferStats>, Status> {
        Ok(Response::new(self.store.transfer_stats().await?))
    }
}
