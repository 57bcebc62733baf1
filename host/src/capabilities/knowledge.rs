//! `bsm:plugin/knowledge`: not available in this host yet; every call answers
//! `unavailable` until the vector index lands.

use crate::bindings::knowledge::{Document, Error, Hit, Host};

use super::Caller;

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
