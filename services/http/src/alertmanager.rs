//! Alertmanager's API v2, as a client: alerts posted to `/api/v2/alerts`, so that teams route
//! cxstream's CX alerts with the receivers they already use. Alertmanager identifies an
//! alert by its labels and forgets one not posted again within its `resolve_timeout`, so
//! senders post firing alerts again and again, and a resolved one with its end time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("alertmanager url `{0}` must be http://host:port (https needs a TLS-enabled build)")]
    Url(String),
    #[error("alertmanager {url}: {message}")]
    Request { url: String, message: String },
    #[error("alertmanager did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("alertmanager {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// An alert as Alertmanager takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Set when the alert has resolved (wall-clock time).
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

impl PostableAlert {
    /// Marks it resolved as of `at`.
    pub fn resolved_at(mut self, at: SystemTime) -> Self {
        self.ends_at = Some(rfc3339(at));
        self
    }
}

/// `2026-12-03T12:00:00Z`, as Alertmanager reads times.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

pub struct AlertmanagerClient {
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AlertmanagerClient {
    /// `base`: Alertmanager's address, e.g. `http://127.0.0.1:9093`.
    pub fn new(base: &str) -> Result<Self, AlertmanagerError> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(AlertmanagerError::Url(base.to_string()));
        }
        let url = format!("{base}/api/v2/alerts");
        url.parse::<hyper::Uri>()
            .map_err(|_| AlertmanagerError::Url(base.to_string()))?;
        Ok(AlertmanagerClient {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn post(&self, alerts: &[PostableAlert]) -> Result<(), AlertmanagerError> {
        let err = |message: String| AlertmanagerError::Request {
            url: self.url.clone(),
            message,
        };
        let body = serde_json::to_vec(alerts).map_err(|e| err(e.to_string()))?;
        let request = hyper::Request::post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(AlertmanagerError::Status {
            url: self.url.clone(),
            status: status.as_u16(),
            body: body.chars().take(500).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_serialize_as_alertmanager_takes_them() {
        let a = PostableAlert {
            labels: BTreeMap::from([("alertname".into(), "CxStepDrop".into())]),
            annotations: BTreeMap::from([("summary".into(), "checkout".into())]),
            ends_at: None,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap_or_default(),
            r#"{"labels":{"alertname":"CxStepDrop"},"annotations":{"summary":"checkout"}}"#
        );
        let ended = a.resolved_at(SystemTime::UNIX_EPOCH);
        assert_eq!(ended.ends_at.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert!(AlertmanagerClient::new("https://am:9093").is_err());
        assert!(AlertmanagerClient::new("http://127.0.0.1:9093/").is_ok());
    }
}
