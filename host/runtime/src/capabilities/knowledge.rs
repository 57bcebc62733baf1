//! `bsm:plugin/knowledge`: not available in this host yet; every call answers
//! `unavailable` until the vector index lands.

use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::bindings::knowledge::{self, Document, Error, Hit, Host};

/// The `knowledge` capability: nothing behind it yet.
pub struct Knowledge;

impl Capability for Knowledge {
    type Shared = ();
    type State = KnowledgeState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut KnowledgeState,
    ) -> wasmtime::Result<()> {
        knowledge::add_to_linker::<T, HasSelf<KnowledgeState>>(linker, get)
    }

    fn for_run(_: &(), run: &RunInfo<'_>) -> KnowledgeState {
        KnowledgeState::new(run.caller.clone())
    }
}

const NOT_YET: &str = "the knowledge capability is not available in this host yet";

/// Per-run state: who is searching.
pub struct KnowledgeState {
    _caller: Caller,
}

impl KnowledgeState {
    pub fn new(caller: Caller) -> Self {
        Self { _caller: caller }
    }
}

impl Host for KnowledgeState {
    async fn search(
        &mut self,
        _collection: String,
        _query: String,
        _top_k: u32,
    ) -> Result<Vec<Hit>, Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }

    async fn upsert(
        &mut self,
        _collection: String,
        _documents: Vec<Document>,
    ) -> Result<(), Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }
}
