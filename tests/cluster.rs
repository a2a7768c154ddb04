//! The local Redis Cluster (`scripts/services --with-redis-cluster`, 127.0.0.1:7000-7002, or the
//! comma-separated node URLs in `BITMIG_TEST_REDIS_CLUSTER_URLS`) for a [`TestJob`] whose programs keep their
//! ledger there: [`TestJob::use_redis_cluster`] points the programs at the cluster and returns a
//! [`ClusterLedger`] that reads bits through a cluster client and through `redis-cli -c` itself, and deletes the
//! job's keys from every node when dropped.

use redis::cluster_async::ClusterConnection;

use crate::{clean_up, Bits, TestJob};

pub const DEFAULT_CLUSTER_URLS: &str =
    "redis://127.0.0.1:7000/,redis://127.0.0.1:7001/,redis://127.0.0.1:7002/";

/// The cluster's node URLs, comma-separated (as `BITMIG_REDIS_URL` takes them).
pub fn cluster_urls() -> String {
    std::env::var("BITMIG_TEST_REDIS_CLUSTER_URLS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_CLUSTER_URLS.to_owned())
}

/// The job's keys on the cluster.
pub struct ClusterLedger {
    pub con: ClusterConnection,
    job: String,
    urls: String,
}

impl TestJob {
    /// From now on the programs this job starts keep their ledger on the Redis Cluster.
    pub async fn use_redis_cluster(&mut self) -> ClusterLedger {
        let urls = cluster_urls();
        let con = redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("Redis Cluster URLs {urls}: {e}"))
            .get_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!("connect to the Redis Cluster at {urls} (scripts/services --with-redis-cluster): {e}")
            });
        self.services.redis_url = urls.clone();
        ClusterLedger {
            con,
            job: self.name.clone(),
            urls,
        }
    }
}

impl ClusterLedger {
    /// `BITCOUNT bitmig:{JOB:FIRST}:<bits>`, sent to the node that holds the slot.
    pub async fn bitcount(&self, first: u64, bits: Bits) -> u64 {
        let mut con = self.con.clone();
        redis::cmd("BITCOUNT")
            .arg(format!("bitmig:{{{}:{first}}}:{}", self.job, bits.suffix()))
            .query_async(&mut con)
            .await
            .expect("BITCOUNT on the cluster")
    }

    /// The same count as `redis-cli -c -h HOST -p PORT BITCOUNT KEY` prints it, against the first node
    /// (`-c` follows the cluster's redirections to the node that holds the key).
    pub async fn redis_cli_bitcount(&self, first: u64, bits: Bits) -> u64 {
        let node = url::Url::parse(self.urls.split(',').next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("cluster URL {}: {e}", self.urls));
        let out = tokio::process::Command::new("redis-cli")
            .args(["-c", "-h", node.host_str().unwrap_or("127.0.0.1")])
            .args(["-p", &node.port().unwrap_or(6379).to_string()])
            .arg("BITCOUNT")
            .arg(format!("bitmig:{{{}:{first}}}:{}", self.job, bits.suffix()))
            .output()
            .await
            .expect("run redis-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("redis-cli -c BITCOUNT printed {text:?} ({out:?})"))
    }

    /// The planned groups, from `bitmig:{JOB}:groups`, ascending.
    pub async fn groups(&self) -> Vec<u64> {
        let mut con = self.con.clone();
        let mut v: Vec<u64> = redis::cmd("ZRANGE")
            .arg(format!("bitmig:{{{}}}:groups", self.job))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .expect("ZRANGE groups on the cluster");
        v.sort_unstable();
        v
    }
}

impl Drop for ClusterLedger {
    fn drop(&mut self) {
        let (urls, job) = (self.urls.clone(), self.job.clone());
        clean_up(format!("{job} on the Redis Cluster"), async move {
            // Each node's own keys; one DEL per key, as keys of different slots cannot share a DEL.
            for url in urls.split(',') {
                let result = async {
                    let mut node = redis::Client::open(url)?
                        .get_multiplexed_async_connection()
                        .await?;
                    for pattern in [format!("bitmig:{{{job}}}*"), format!("bitmig:{{{job}:*")] {
                        let mut cursor: u64 = 0;
                        loop {
                            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(&pattern)
                                .arg("COUNT")
                                .arg(1000)
                                .query_async(&mut node)
                                .await?;
                            for key in keys {
                                redis::cmd("DEL")
                                    .arg(key)
                                    .query_async::<()>(&mut node)
                                    .await?;
                            }
                            if next == 0 {
                                break;
                            }
                            cursor = next;
                        }
                    }
                    redis::RedisResult::Ok(())
                }
                .await;
                if let Err(e) = result {
                    eprintln!("cleanup: cluster node {url}: {e}");
                }
            }
        });
    }
}
