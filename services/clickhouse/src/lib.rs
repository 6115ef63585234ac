//! ClickHouse adapter: connection, versioned migrations, the rows cxstream writes, and the
//! batch-commit protocol that makes every write idempotent.
//!
//! Works against ClickHouse 18.16 (Debian) and current releases: RowBinary without
//! validation, no compression, and only SQL both understand.

mod alerts;
mod commit;
mod compaction;
mod journey_state;
mod migrations;
mod rows;

pub mod erasure;
pub use alerts::{AlertRow, AlertsTable};
pub use commit::{BatchCommitter, BatchEnd, LastCommit, Resume};
pub use compaction::Generation;
pub use journey_state::Stored;
pub use migrations::{apply_migrations, Migration, MIGRATIONS};
pub use rows::{AnswerRow, BatchRow, MinuteRow, StateRow, TouchpointRow};

use clickhouse::Client;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("journey state of customer in partition {partition} cannot be decoded: {message}")]
    State { partition: u16, message: String },
    /// A migration that must not run beside journey services found them running.
    #[error("{0}")]
    JourneysRunning(String),
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
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Connection {
    /// A client without a default database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> Client {
        let mut c = Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            // 18.16 cannot read its own LZ4 responses through this client; validation needs
            // RowBinaryWithNamesAndTypes, which 18.16 lacks.
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if !self.password.is_empty() {
            c = c.with_password(&self.password);
        }
        c
    }

    pub fn client(&self) -> Client {
        self.server_client().with_database(&self.database)
    }

    /// Fails when the server refuses the login; a server that cannot be reached passes
    /// (the services wait for it, not ready meanwhile), as does any other error.
    pub async fn check_login(&self) -> Result<()> {
        let answer = self
            .server_client()
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .ctx(|| "logging in".into());
        match answer.as_ref().err().and_then(Error::login_refusal) {
            Some(reason) => Err(Error::LoginRefused {
                url: self.url.clone(),
                user: self.user.clone(),
                reason,
            }),
            None => Ok(()),
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
