//! The admin API over HTTP, with errors that say what went wrong.

use anyhow::{Context, Result};
use nio_proto::model::{AnyResource, Kind};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::fmt;

/// The server answered with an error; shown as the server wrote it.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server said {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiFailure {}

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str, token: &str) -> Result<AdminClient> {
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    /// Any call; a non-2xx answer is an [`ApiFailure`] with the server's
    /// message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let (s, v) = self.call(method, path, query, body).await?;
        if !s.is_success() {
            return Err(Self::failure(s, &v));
        }
        Ok(v)
    }

    /// GET one resource; `None` when it does not exist.
    pub async fn get_resource(&self, kind: Kind, name: &str) -> Result<Option<Value>> {
        let path = format!("/apis/nio.dev/v1/{}/{name}", kind.plural());
        let (s, v) = self.call(Method::GET, &path, &[], None).await?;
        if s == StatusCode::NOT_FOUND
            && v["error"].as_str().is_some_and(|e| e.contains("not found"))
        {
            return Ok(None);
        }
        if !s.is_success() {
            return Err(Self::failure(s, &v));
        }
        Ok(Some(v))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin API at {} ({}); check --server or NIO_SERVER",
                self.base,
                if e.is_connect() {
                    "connection refused or unreachable"
                } else if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                }
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    fn failure(status: StatusCode, v: &Value) -> anyhow::Error {
        let mut message = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        if status == StatusCode::NOT_FOUND
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("no such endpoint"))
        {
            message.push_str(
                " (is --server the admin API of a Nio control plane, and is it this version?)",
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            message.push_str(" (is the token for this server?)");
        }
        ApiFailure {
            status: status.as_u16(),
            message,
        }
        .into()
    }

    /// A GET whose body is read as it comes (Server-Sent Events).
    pub async fn stream(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Response> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v = resp.json::<Value>().await.unwrap_or(Value::Null);
            return Err(Self::failure(status, &v));
        }
        Ok(resp)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        self.get_json_query(path, &[]).await
    }

    pub async fn get_json_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let (s, v) = self.call(Method::GET, path, query, None).await?;
        if !s.is_success() {
            return Err(Self::failure(s, &v));
        }
        Ok(v)
    }

    /// Create or update; returns `created`, `configured` or `unchanged`.
    pub async fn apply(&self, resource: &AnyResource) -> Result<&'static str> {
        let kind = resource.kind();
        let path = format!("/apis/nio.dev/v1/{}/{}", kind.plural(), resource.name());
        let mut body = resource.to_value();
        // Apply means "make it so": no optimistic-concurrency precondition.
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let (s, existing) = self.call(Method::GET, &path, &[], None).await?;
        if s == StatusCode::NOT_FOUND {
            let (s, v) = self
                .call(
                    Method::POST,
                    &format!("/apis/nio.dev/v1/{}", kind.plural()),
                    &[],
                    Some(&body),
                )
                .await?;
            return if s.is_success() {
                Ok("created")
            } else {
                Err(Self::failure(s, &v))
            };
        }
        if !s.is_success() {
            return Err(Self::failure(s, &existing));
        }
        let (s, v) = self.call(Method::PUT, &path, &[], Some(&body)).await?;
        if !s.is_success() {
            return Err(Self::failure(s, &v));
        }
        let before = &existing["metadata"]["resourceVersion"];
        Ok(if &v["metadata"]["resourceVersion"] == before {
            "unchanged"
        } else {
            "configured"
        })
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let (s, v) = self
            .call(
                Method::DELETE,
                &format!("/apis/nio.dev/v1/{}/{name}", kind.plural()),
                &[],
                None,
            )
            .await?;
        if s.is_success() {
            Ok(())
        } else {
            Err(Self::failure(s, &v))
        }
    }
}
