//! `bsm:plugin/http`: outbound HTTP for plugins whose manifest grants it
//! (`[capabilities.http]`: allowed hosts, secret names). The requests are
//! made behind [`HttpEngine`] (the platform's reqwest client in `bsm
//! serve`), which also holds the secrets: a plugin names one, the engine
//! puts it in a header or signs with it. With no engine every call answers
//! `unavailable`.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::io_home::IoHome;
use crate::tape::{self, Tape};
use super::{Caller, Capability, RunInfo};
use crate::bindings::http::{self, Error, Host, Request, Response};
use crate::manifest::HttpGrant;

/// Told to a plugin when the host makes no outbound requests.
pub const NOT_CONFIGURED: &str = "outbound HTTP is not configured on this host";

/// Makes requests and keeps secrets for plugins. The grant is checked by
/// the engine against the parsed URL (host, port, scheme) and the named
/// secrets; errors are the WIT ones, so the engine decides what a plugin is
/// told.
#[async_trait::async_trait]
pub trait HttpEngine: Send + Sync + 'static {
    async fn send(
        &self,
        caller: &Caller,
        grant: &HttpGrant,
        request: Request,
    ) -> Result<Response, Error>;

    fn sign(
        &self,
        caller: &Caller,
        grant: &HttpGrant,
        secret: &str,
        body: &[u8],
    ) -> Result<String, Error>;
}

/// The `http` capability: an optional engine for the whole process.
pub struct Http;

impl Capability for Http {
    type Shared = Option<Arc<dyn HttpEngine>>;
    type State = HttpState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut HttpState,
    ) -> wasmtime::Result<()> {
        http::add_to_linker::<T, HasSelf<HttpState>>(linker, get)
    }

    fn for_run(engine: &Self::Shared, run: &RunInfo<'_>) -> HttpState {
        HttpState {
            engine: engine.clone(),
            caller: run.caller.clone(),
            grant: run.manifest.capabilities.http.clone(),
            tape: run.tape.clone(),
        }
    }
}

/// Per-run state: the engine, who asks, and what its manifest grants.
pub struct HttpState {
    engine: Option<Arc<dyn HttpEngine>>,
    caller: Caller,
    grant: Option<HttpGrant>,
    tape: Option<Arc<Tape>>,
}

impl HttpState {
    fn granted(&self) -> Result<&HttpGrant, Error> {
        self.grant.as_ref().ok_or_else(|| {
            Error::NotPermitted("this plugin's manifest grants no outbound HTTP".into())
        })
    }

    fn ready(&self) -> Result<(&Arc<dyn HttpEngine>, &HttpGrant), Error> {
        let grant = self.granted()?;
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| Error::Unavailable(NOT_CONFIGURED.into()))?;
        Ok((engine, grant))
    }
}

impl Host for HttpState {
    async fn send(&mut self, request: Request) -> Result<Response, Error> {
        self.granted()?;
        let args = tape::args(&self.tape, &request);
        let ready = self
            .ready()
            .map(|(engine, grant)| (engine.clone(), grant.clone(), self.caller.clone()));
        tape::through(&self.tape, "http.send", args, Error::Unavailable, async {
            let (engine, grant, caller) = ready?;
            // A task of its own, as an LLM call (see `IoHome::spawn_and_wait`):
            // the run is woken once, when the answer is read.
            IoHome::current()
                .spawn_and_wait(async move { engine.send(&caller, &grant, request).await })
                .await
                .unwrap_or_else(|gone| Err(Error::Unavailable(gone.to_string())))
        })
        .await
    }

    async fn sign(&mut self, secret: String, body: Vec<u8>) -> Result<String, Error> {
        self.granted()?;
        let args = tape::args(&self.tape, &(&secret, &body));
        tape::through(&self.tape, "http.sign", args, Error::Unavailable, async {
            let (engine, grant) = self.ready()?;
            engine.sign(&self.caller, grant, &secret, &body)
        })
        .await
    }
}
