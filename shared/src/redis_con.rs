//! The one Redis connection every bitmig program holds: a single node or a Redis Cluster (DESIGN.md §11).
//!
//! `BITMIG_REDIS_URL` with one URL is a single node, reached through a [`ConnectionManager`] that reconnects
//! by itself. Several comma-separated URLs are the seed nodes of a Redis Cluster, reached through the redis
//! crate's async cluster client, which follows `MOVED`/`ASK` and reconnects. Both are a
//! [`redis::aio::ConnectionLike`], so commands and pipelines are written once.
//!
//! On a cluster a pipeline (atomic or not) must keep to one slot: the callers keep each pipeline inside one
//! hash tag (`{JOB}` or `{JOB:FIRST}`) and ask [`RedisCon::is_cluster`] where a single node would have let
//! them pipeline across groups.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const RETRIES: u32 = 6;

/// A single node or a cluster; cheap to clone (both are multiplexed handles).
#[derive(Clone)]
pub enum RedisCon {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The node URLs of `BITMIG_REDIS_URL`: comma-separated, blanks around commas ignored, empty items refused.
pub fn split_urls(urls: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = urls.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(
            "the Redis URL list has an empty item (URLs are separated by single commas)".into(),
        );
    }
    Ok(parts)
}

impl RedisCon {
    /// Connect to one node (one URL) or to the cluster whose seed nodes are listed (several URLs).
    pub async fn connect(urls: &str) -> RedisResult<Self> {
        let nodes = split_urls(urls).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "BITMIG_REDIS_URL", e))
        })?;
        if let [single] = nodes.as_slice() {
            let client = redis::Client::open(*single)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(RETRIES as usize);
            let con = ConnectionManager::new_with_config(client, config).await?;
            return Ok(RedisCon::Single(con));
        }
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(RETRIES)
            .build()?;
        Ok(RedisCon::Cluster(client.get_async_connection().await?))
    }

    /// Whether commands of different slots must go in different pipelines.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisCon::Cluster(_))
    }
}

impl ConnectionLike for RedisCon {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisCon::Single(c) => c.req_packed_command(cmd),
            RedisCon::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisCon::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisCon::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisCon::Single(c) => c.get_db(),
            RedisCon::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_urls;

    #[test]
    fn one_url_or_several() {
        assert_eq!(split_urls("redis://a:1/").unwrap(), vec!["redis://a:1/"]);
        assert_eq!(
            split_urls("redis://a:7000, redis://a:7001 ,redis://a:7002").unwrap(),
            vec!["redis://a:7000", "redis://a:7001", "redis://a:7002"]
        );
        assert!(split_urls("redis://a:7000,,redis://a:7001").is_err());
        assert!(split_urls("").is_err());
    }
}
