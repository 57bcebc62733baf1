//! `bsm:plugin/knowledge`: document collections searched by meaning and by
//! keyword. The index lives behind [`KnowledgeEngine`] (the `bsm-knowledge`
//! crate in `bsm serve` and the CLI); with none configured every call answers
//! `unavailable`, so a plugin that uses knowledge still loads and runs.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::manifest::KnowledgeGrant;
use crate::tape::{self, Tape};
use crate::bindings::knowledge::{self, Document, Error, Hit, Host, Query};

/// Told to a plugin when the host keeps no knowledge collections.
pub const NOT_CONFIGURED: &str = "no knowledge store is configured for this host";

/// A backend holding document collections for plugins. Errors are the WIT
/// ones, so the engine decides what a plugin is told.
#[async_trait::async_trait]
pub trait KnowledgeEngine: Send + Sync + 'static {
    async fn search(&self, caller: &Caller, collection: &str, query: Query)
    -> Result<Vec<Hit>, Error>;

    async fn upsert(
        &self,
        caller: &Caller,
        collection: &str,
        documents: Vec<Document>,
    ) -> Result<(), Error>;

    async fn delete(&self, caller: &Caller, collection: &str, ids: Vec<String>)
    -> Result<u32, Error>;

    async fn get(&self, caller: &Caller, collection: &str, id: &str)
    -> Result<Option<Document>, Error>;
}

/// The `knowledge` capability: an optional engine for the whole process.
pub struct Knowledge;

impl Capability for Knowledge {
    type Shared = Option<Arc<dyn KnowledgeEngine>>;
    type State = KnowledgeState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut KnowledgeState,
    ) -> wasmtime::Result<()> {
        knowledge::add_to_linker::<T, HasSelf<KnowledgeState>>(linker, get)
    }

    fn for_run(engine: &Self::Shared, run: &RunInfo<'_>) -> KnowledgeState {
        KnowledgeState::new(engine.clone(), run.caller.clone())
            .granted(run.manifest.capabilities.knowledge.clone())
            .taped(run.tape.clone())
    }
}

/// Per-run state: the engine (if any) and who is asking.
pub struct KnowledgeState {
    engine: Option<Arc<dyn KnowledgeEngine>>,
    caller: Caller,
    tape: Option<Arc<Tape>>,
    /// The collections the manifest grants (`None`: built outside a
    /// manifest, unrestricted).
    grant: Option<KnowledgeGrant>,
}

impl KnowledgeState {
    pub fn new(engine: Option<Arc<dyn KnowledgeEngine>>, caller: Caller) -> Self {
        Self {
            engine,
            caller,
            grant: None,
            tape: None,
        }
    }

    /// Records or replays this run's calls.
    pub fn taped(mut self, tape: Option<Arc<Tape>>) -> Self {
        self.tape = tape;
        self
    }

    /// Restricts the run to the collections its manifest grants.
    pub fn granted(mut self, grant: Option<KnowledgeGrant>) -> Self {
        self.grant = grant;
        self
    }

    fn check(&self, collection: &str, write: bool) -> Result<(), Error> {
        let Some(grant) = &self.grant else {
            return Ok(());
        };
        let allowed = if write {
            grant.may_write(collection)
        } else {
            grant.may_read(collection)
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::NotPermitted(format!(
                "collection {collection:?} is not granted for {} to this plugin (capabilities.knowledge.{})",
                if write { "writing" } else { "reading" },
                if write { "write" } else { "read" }
            )))
        }
    }

    fn engine(&self) -> Result<&Arc<dyn KnowledgeEngine>, Error> {
        self.engine
            .as_ref()
            .ok_or_else(|| Error::Unavailable(NOT_CONFIGURED.into()))
    }
}

impl Host for KnowledgeState {
    async fn search(&mut self, collection: String, query: Query) -> Result<Vec<Hit>, Error> {
        self.check(&collection, false)?;
        let args = tape::args(&self.tape, &(&collection, &query));
        tape::through(&self.tape, "knowledge.search", args, Error::Unavailable, async {
            self.engine()?
                .search(&self.caller, &collection, query)
                .await
        })
        .await
    }

    async fn upsert(&mut self, collection: String, documents: Vec<Document>) -> Result<(), Error> {
        self.check(&collection, true)?;
        let args = tape::args(&self.tape, &(&collection, &documents));
        tape::through(&self.tape, "knowledge.upsert", args, Error::Unavailable, async {
            self.engine()?
                .upsert(&self.caller, &collection, documents)
                .await
        })
        .await
    }

    async fn delete(&mut self, collection: String, ids: Vec<String>) -> Result<u32, Error> {
        self.check(&collection, true)?;
        let args = tape::args(&self.tape, &(&collection, &ids));
        tape::through(&self.tape, "knowledge.delete", args, Error::Unavailable, async {
            self.engine()?
                .delete(&self.caller, &collection, ids)
                .await
        })
        .await
    }

    async fn get(&mut self, collection: String, id: String) -> Result<Option<Document>, Error> {
        self.check(&collection, false)?;
        let args = tape::args(&self.tape, &(&collection, &id));
        tape::through(&self.tape, "knowledge.get", args, Error::Unavailable, async {
            self.engine()?.get(&self.caller, &collection, &id).await
        })
        .await
    }
}
