//! ClickHouse adapter: connection, versioned migrations, the rows cxstream writes, and the
//! batch-commit protocol that makes every write idempotent.
//!
//! Works against ClickHouse 18.16 (Debian) and current releases: RowBinary without
//! validation, no compression, and only SQL both understand.

mod alerts;
mod claims;
pub mod cluster;
mod commit;
mod compaction;
mod journey_state;
pub mod map_positions;
mod migrations;
mod rows;
mod snapshots;
mod tls;

pub mod erasure;
pub use alerts::{AlertRow, AlertsTable};
pub use commit::{BatchCommitter, BatchEnd, LastCommit, Resume, Wanted};
pub use compaction::Generation;
pub use journey_state::Stored;
pub use migrations::{apply_migrations, Migration, MIGRATIONS};
pub use rows::{AnswerRow, BatchRow, MinuteRow, StateRow, TouchpointRow};
pub use snapshots::{Snapshot, SnapshotsTable};
pub use tls::{Tls, TlsError};

use clickhouse::Client;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The database's tables are laid out otherwise than configured.
    #[error("{0}")]
    Layout(String),
    #[error("journey state of customer in partition {partition} cannot be decoded: {message}")]
    State { partition: u16, message: String },
    /// A migration that must not run beside journey services found them running.
    #[error("{0}")]
    JourneysRunning(String),
    /// The journey map changed a list in place since its journeys were stored.
    #[error("{0}")]
    MapMoved(String),
    /// The server refused the configured user: retrying cannot help.
    #[error(
        "ClickHouse at {url} refused user `{user}` ({reason}): set clickhouse.user and the \
         password (clickhouse.password_file or CXSTREAM_CLICKHOUSE_PASSWORD) to a login it accepts"
    )]
    LoginRefused {
        url: String,
        user: String,
        reason: &'static str,
    },
    /// The server's certificate failed verification: retrying cannot help either.
    #[error(
        "the certificate of ClickHouse at {url} is not trusted ({reason}): set \
         clickhouse.ca_file to the PEM of the CA that signed it, or fix the url's host name"
    )]
    CertificateRefused { url: String, reason: String },
}

impl Error {
    /// Why the server refused the login, when that is what it did (ClickHouse's error codes
    /// 192 unknown user, 193 wrong password, 194 password required, 516 authentication
    /// failed, as every version from 18.16 on writes them).
    pub fn login_refusal(&self) -> Option<&'static str> {
        let Error::ClickHouse { source, .. } = self else {
            return None;
        };
        let text = source.to_string();
        [
            ("Code: 192", "unknown user"),
            ("Code: 193", "wrong password"),
            ("Code: 194", "a password is required"),
            ("Code: 516", "authentication failed"),
        ]
        .into_iter()
        .find(|(code, _)| text.contains(code))
        .map(|(_, why)| why)
    }

    /// OpenSSL's reason when the TLS handshake failed on the server's certificate (e.g.
    /// `unable to get local issuer certificate`, `certificate has expired`, `hostname
    /// mismatch`).
    pub fn certificate_refusal(&self) -> Option<String> {
        let Error::ClickHouse { source, .. } = self else {
            return None;
        };
        // The handshake's words sit deep in the chain of causes (hyper, then OpenSSL).
        let mut text = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(source);
        while let Some(e) = cause {
            text.push_str(&e.to_string());
            cause = e.source();
        }
        let after = text.split_once("certificate verify failed")?.1;
        let reason = after
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map_or("certificate verify failed", |(r, _)| r);
        Some(reason.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, clickhouse::error::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::ClickHouse {
            context: what(),
            source,
        })
    }
}

/// Connection settings. The password is never printed.
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// For `https://` URLs: the roots the server's certificate is checked against.
    pub tls: Option<Tls>,
    /// One server, or the shards of a cluster.
    pub layout: cluster::Layout,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("tls", &self.tls.is_some())
            .field("layout", &self.layout)
            .finish()
    }
}

impl Connection {
    /// A client without a default database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> Client {
        let base = match &self.tls {
            Some(tls) => tls.client(),
            None => Client::default(),
        };
        let mut c = base
            .with_url(&self.url)
            .with_user(&self.user)
            // 18.16 cannot read its own LZ4 responses through this client; validation needs
            // RowBinaryWithNamesAndTypes, which 18.16 lacks.
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if !self.password.is_empty() {
            c = c.with_password(&self.password);
        }
        if self.layout.cluster().is_some() {
            // An INSERT into a Distributed table returns once every shard wrote its rows (not
            // when they are queued): a batch's marker is written after its rows. And a join
            // or IN over two Distributed tables reads the right side whole, on the server
            // that was asked, whatever shard its rows are on.
            c = c
                .with_setting("insert_distributed_sync", "1")
                .with_setting("distributed_product_mode", "global");
        }
        c
    }

    pub fn client(&self) -> Client {
        self.server_client().with_database(&self.database)
    }

    /// Fails when the server refuses the login or its certificate is not trusted, or when
    /// the database was made for the other layout (see [`Self::check_layout`]); a server
    /// that cannot be reached passes (the services wait for it, not ready meanwhile), as
    /// does any other error.
    pub async fn check_login(&self) -> Result<()> {
        let server = self.server_client();
        let answer = server
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .ctx(|| "logging in".into());
        let Err(e) = answer else {
            return match self.check_layout(&server).await {
                Err(e @ Error::Layout(_)) => Err(e),
                _ => Ok(()),
            };
        };
        if let Some(reason) = e.login_refusal() {
            return Err(Error::LoginRefused {
                url: self.url.clone(),
                user: self.user.clone(),
                reason,
            });
        }
        match e.certificate_refusal() {
            Some(reason) => Err(Error::CertificateRefused {
                url: self.url.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Fails when the database was made for the other layout (one server, or a cluster):
    /// its tables would be read and changed under the wrong names, and a Distributed table
    /// written without `insert_distributed_sync` takes inserts before its shards have them,
    /// so a batch's marker could count before its rows arrive. A database not made yet
    /// passes.
    pub async fn check_layout(&self, server: &Client) -> Result<()> {
        let db = &self.database;
        let engine = server
            .query(
                "SELECT engine FROM system.tables WHERE database = ? AND name = 'schema_migrations'",
            )
            .bind(db)
            .fetch_optional::<String>()
            .await
            .ctx(|| "looking up schema_migrations".into())?;
        let Some(engine) = engine else {
            return Ok(());
        };
        match (self.layout.cluster(), engine == "Distributed") {
            (Some(c), false) => Err(Error::Layout(format!(
                "database `{db}` was created on one server, and clickhouse.cluster is `{}`: \
                 remove clickhouse.cluster, or migrate a new database on the cluster and replay \
                 into it (README § Operations, A ClickHouse cluster)",
                c.name()
            ))),
            (None, true) => Err(Error::Layout(format!(
                "database `{db}` was created on a cluster (its tables are Distributed): set \
                 clickhouse.cluster to the cluster's name"
            ))),
            _ => Ok(()),
        }
    }
}

/// Server version string, e.g. `18.16.1`.
pub async fn server_version(client: &Client) -> Result<String> {
    client
        .query("SELECT version()")
        .fetch_one::<String>()
        .await
        .ctx(|| "SELECT version()".into())
}
