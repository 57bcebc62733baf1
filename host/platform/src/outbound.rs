//! The engine behind the `http` capability: requests to the hosts a
//! plugin's manifest grants, with host secrets put in headers or used to
//! sign, never handed to the plugin. Redirects are not followed (one could
//! leave the granted host), bodies are bounded both ways, and every call
//! has a timeout.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::secrets::Secrets;
use bsm_runtime::bindings::http::{Error, Header, Request, Response};
use bsm_runtime::capabilities::Caller;
use bsm_runtime::capabilities::http::HttpEngine;
use bsm_runtime::io_home::IoHome;
use bsm_runtime::manifest::HttpGrant;

/// Largest answer body handed to a plugin.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Largest request body a plugin may send.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Outbound HTTP for plugins.
pub struct OutboundHttp {
    client: reqwest::Client,
    /// Requests are sent from the runtime this was built on, so their
    /// connections are driven there (see [`IoHome`]).
    home: IoHome,
    secrets: Secrets,
}

impl OutboundHttp {
    pub fn new(secrets: Secrets) -> anyhow::Result<Self> {
        let client = bsm_llm::http_client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bsm/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            home: IoHome::current(),
            secrets,
        })
    }

    fn secret(&self, caller: &Caller, grant: &HttpGrant, name: &str) -> Result<&str, Error> {
        if !grant.allows_secret(name) {
            return Err(Error::NotPermitted(format!(
                "secret {name:?} is not granted to plugin {:?} (capabilities.http.secrets)",
                caller.plugin_id
            )));
        }
        self.secrets
            .get(name)
            .map(|s| s.expose_secret())
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "no secret named {name:?} is configured on this host ([secrets])"
                ))
            })
    }
}

#[async_trait::async_trait]
impl HttpEngine for OutboundHttp {
    async fn send(
        &self,
        caller: &Caller,
        grant: &HttpGrant,
        request: Request,
    ) -> Result<Response, Error> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| Error::InvalidRequest(format!("{:?} is not a URL: {e}", request.url)))?;
        let (scheme, host) = (url.scheme(), url.host_str().unwrap_or_default());
        let port = url.port_or_known_default().unwrap_or(0);
        if !grant.allows(scheme, host, port) {
            return Err(Error::NotPermitted(format!(
                "{scheme}://{host}:{port} is not in plugin {:?}'s capabilities.http.allowed-hosts",
                caller.plugin_id
            )));
        }
        let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                Error::InvalidRequest(format!("{:?} is not an HTTP method", request.method))
            })?;
        let mut builder = self.client.request(method, url);
        for Header { name, value } in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        for h in &request.secret_headers {
            if !h.template.contains("{secret}") {
                return Err(Error::InvalidRequest(format!(
                    "the template of header {:?} has no {{secret}}",
                    h.name
                )));
            }
            let value = h
                .template
                .replace("{secret}", self.secret(caller, grant, &h.secret)?);
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                Error::InvalidRequest(format!("header {:?} is not a valid value", h.name))
            })?;
            value.set_sensitive(true);
            builder = builder.header(h.name.as_str(), value);
        }
        if let Some(body) = request.body {
            if body.len() > MAX_REQUEST_BYTES {
                return Err(Error::TooLarge(body.len() as u64));
            }
            builder = builder.body(body);
        }
        let timeout = request
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)))
            .min(MAX_TIMEOUT);
        let call = async {
            let mut response = self
                .home
                .run(builder.send())
                .await
                .map_err(|gone| Error::Transport(gone.to_string()))?
                .map_err(transport)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| Header {
                    name: k.to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Error::TooLarge((body.len() + chunk.len()) as u64));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Timeout)?
    }

    fn sign(
        &self,
        caller: &Caller,
        grant: &HttpGrant,
        secret: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        let key = self.secret(caller, grant, secret)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        mac.update(body);
        Ok(hex::encode(mac.finalize().into_bytes()))
    }
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else {
        Error::Transport(e.to_string())
    }
}
