//! HTTPS to ClickHouse: the system's trusted roots, plus a private CA when the server's
//! certificate is signed by one (an internal PKI, or the local stack's throw-away CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clickhouse::Client;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;

/// Why the TLS settings cannot be used; the message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("clickhouse.ca_file {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clickhouse.ca_file {path} holds no PEM certificate{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Certificate {
        path: PathBuf,
        #[source]
        source: Option<native_tls::Error>,
    },
    #[error("TLS cannot be set up: {0}")]
    Setup(#[source] native_tls::Error),
}

/// How cxstream trusts ClickHouse's certificate over `https://`.
#[derive(Clone)]
pub struct Tls(native_tls::TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

// The clickhouse crate's own defaults: ClickHouse closes idle connections after 3 s.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

impl Tls {
    /// The system's roots, plus every certificate in the PEM file `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let not_pem = |source| TlsError::Certificate {
                path: path.to_owned(),
                source,
            };
            let certs =
                native_tls::Certificate::stack_from_pem(&pem).map_err(|e| not_pem(Some(e)))?;
            if certs.is_empty() {
                return Err(not_pem(None));
            }
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        builder.build().map(Tls).map_err(TlsError::Setup)
    }

    /// A client speaking `https://` (and `http://`) with these roots.
    pub(crate) fn client(&self) -> Client {
        let mut tcp = HttpConnector::new();
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        tcp.enforce_http(false);
        let https = hyper_tls::HttpsConnector::from((tcp, self.0.clone().into()));
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Client::with_http_client(http)
    }
}
