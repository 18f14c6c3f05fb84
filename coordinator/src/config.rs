//! The coordinator's configuration: one struct, every field documented,
//! defaults that run a project on one machine with nothing else installed.

use crate::blob_store::Location;
use crate::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where the embedded database, the blob store and the project key live.
    #[arg(
        long,
        env = "COBBLE_DATA_DIR",
        default_value = "cobble-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(long, env = "COBBLE_LISTEN", default_value = "127.0.0.1:7710")]
    pub listen: SocketAddr,
    /// The TLS certificate chain (PEM) to serve, e.g. from an ACME client;
    /// with `--tls-key`. Default: a self-signed certificate made on first
    /// start in the data dir, whose fingerprint the banner prints for
    /// volunteers and researchers to pin. SIGHUP reloads both files.
    #[arg(long, env = "COBBLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "COBBLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext gRPC instead of TLS: only behind a proxy that
    /// terminates TLS, or for a test that checks plaintext is refused.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_plaintext: bool,
    /// `postgres://...` to use PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "COBBLE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Where blobs (modules, inputs, outputs) are kept: a directory
    /// (default `<data-dir>/blobs`) or `s3://bucket[/prefix]`, keys from
    /// the usual AWS_* variables. Coordinators sharing one database must
    /// share this too (a bucket, or one directory on shared storage).
    #[arg(long, alias = "blob-dir", env = "COBBLE_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// The endpoint of an S3-compatible service (MinIO, Ceph, Garage...)
    /// for an `s3://` blob store; default: AWS.
    #[arg(long, env = "COBBLE_BLOB_STORE_ENDPOINT")]
    pub blob_store_endpoint: Option<String>,
    /// Database connections this process keeps at most (default 8 for
    /// SQLite, 16 for PostgreSQL). With several coordinators on one
    /// PostgreSQL server, their sum must stay below its max_connections.
    #[arg(long, env = "COBBLE_DATABASE_CONNECTIONS")]
    pub database_connections: Option<u32>,
    /// Project signing key (hex secret); default `<data-dir>/project.key`,
    /// created on first start.
    #[arg(long, env = "COBBLE_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Researcher token file; default `<data-dir>/researcher.token`,
    /// created on first start. Submitting, cancelling and collecting jobs
    /// and uploading blobs need the token it holds.
    #[arg(long, env = "COBBLE_RESEARCHER_TOKEN_FILE")]
    pub researcher_token: Option<PathBuf>,
    /// Name shown to volunteers when they attach, and on the web site.
    #[arg(long, default_value = "cobble")]
    pub project_name: String,
    /// A sentence or two about the project, for the web site's home page.
    #[arg(long, env = "COBBLE_PROJECT_DESCRIPTION", default_value = "")]
    pub project_description: String,
    /// The web site and its JSON API (plain HTTP: put a reverse proxy in
    /// front for TLS), or `off`.
    #[arg(long, env = "COBBLE_WEB_LISTEN", default_value = "127.0.0.1:7780")]
    pub web_listen: String,
    /// How often the leader writes the statistics export (BOINC's db_dump)
    /// to `<data-dir>/stats/`, in hours (0: only `export-stats`).
    #[arg(long, env = "COBBLE_STATS_EVERY_HOURS", default_value_t = 24)]
    pub stats_every_hours: u32,
    /// The address volunteers attach to, as the site's join command shows
    /// it (default: this coordinator's own address).
    #[arg(long, env = "COBBLE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The web site's address as volunteers reach it (behind a reverse
    /// proxy, its https:// name), for the install script and the join
    /// command (default: the --web-listen address).
    #[arg(long, env = "COBBLE_SITE_URL")]
    pub site_url: Option<String>,
    /// A directory of worker binaries (`cargo xtask dist` writes
    /// target/dist): the site serves them, their SHA-256 signed by the
    /// project's key, and `/install.sh`, which installs the worker in one
    /// command and checks both.
    #[arg(long, env = "COBBLE_WORKER_DIST")]
    pub worker_dist: Option<PathBuf>,
    /// Largest blob (module, input or output) accepted, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    pub max_blob_bytes: u64,
    /// Bandwidth for serving blobs to workers, bytes per second (0: no
    /// limit). Workers fetch what the coordinator does not send from each
    /// other.
    #[arg(long, env = "COBBLE_MAX_SERVE_BYTES_PER_SEC", default_value_t = 0)]
    pub max_serve_bytes_per_sec: u64,
    /// The public key (hex) of the project's offline code-signing key: jobs
    /// must then carry their module's signature by it (`cobble
    /// sign-module`), and workers pin it on attach and refuse any module it
    /// did not sign, even in a manifest the online key signed.
    #[arg(long, env = "COBBLE_CODE_SIGNING_KEY")]
    pub code_signing_key: Option<String>,
    /// The CPython WASI runtime, `python-3.12.0.wasm` (`cargo xtask setup`
    /// fetches it into target/third-party/): jobs with `runtime =
    /// "python"` run on it. Checked against its pinned SHA-256 at start.
    #[arg(long, env = "COBBLE_PYTHON_RUNTIME", value_name = "FILE")]
    pub python_runtime: Option<PathBuf>,
    /// When set, creating an account needs this code (BOINC's
    /// `invite_code`); hosts of existing accounts attach as before.
    #[arg(long, env = "COBBLE_INVITE_CODE")]
    pub invite_code: Option<String>,
    /// Uploads no job and no result refers to are deleted once this old:
    /// room for a researcher to upload and then submit, and no more, so an
    /// upload nobody uses does not keep its disk for good.
    #[arg(long, default_value_t = 24)]
    pub unreferenced_blob_hours: u32,
    /// How long a finished job's outputs and result rows are kept after its
    /// researcher first collected them (listed its results); then they are
    /// purged and their blobs deleted. Jobs never collected are kept.
    #[arg(long, env = "COBBLE_KEEP_OUTPUTS_HOURS", default_value_t = 720)]
    pub keep_outputs_hours: u32,
    /// Trust, spot-checks, quotas and replica placement.
    #[command(flatten)]
    pub integrity: crate::integrity::Policy,
    /// Rates and counts one address or host may use.
    #[command(flatten)]
    pub limits: crate::limits::LimitConfig,
}

/// Parses only the coordinator's flags, to build a config in code.
#[derive(clap::Parser)]
struct Standalone {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The certificate and key files served: the operator's, or the
    /// self-signed pair kept in the data dir.
    pub fn tls_files(&self) -> (PathBuf, PathBuf) {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (self.data_dir.join("tls.crt"), self.data_dir.join("tls.key")),
        }
    }

    pub fn blob_location(&self) -> crate::error::Result<Location> {
        match &self.blob_store {
            Some(text) => {
                // Keys from the environment only, never a command line.
                let keys = std::env::var("AWS_ACCESS_KEY_ID")
                    .ok()
                    .zip(std::env::var("AWS_SECRET_ACCESS_KEY").ok());
                Location::parse(text, self.blob_store_endpoint.clone(), keys)
            }
            None if self.blob_store_endpoint.is_some() => Err(Error::InvalidArgument(
                "--blob-store-endpoint needs --blob-store s3://bucket".into(),
            )),
            None => Ok(Location::Directory(self.data_dir.join("blobs"))),
        }
    }

    /// Where the statistics export is written and served from.
    pub fn stats_dir(&self) -> PathBuf {
        self.data_dir.join("stats")
    }

    pub fn researcher_token_path(&self) -> PathBuf {
        self.researcher_token
            .clone()
            .unwrap_or_else(|| self.data_dir.join("researcher.token"))
    }

    /// The defaults every flag documents, with the given data dir and a
    /// random loopback port: for embedding the coordinator and for tests.
    pub fn defaults_in(data_dir: &std::path::Path) -> Config {
        use clap::Parser;
        let mut config = Standalone::parse_from(["cobble-coordinator"]).config;
        config.data_dir = data_dir.to_path_buf();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}
