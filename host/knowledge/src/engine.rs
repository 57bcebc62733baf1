//! The plugins' way in: the runtime's `KnowledgeEngine` over [`Knowledge`],
//! translating WIT records and telling a plugin errors it can act on.

use bsm_runtime::bindings::knowledge::{Document, Error, Hit, Query, SearchMode as WitMode};
use bsm_runtime::capabilities::Caller;
use bsm_runtime::capabilities::knowledge::KnowledgeEngine;

use crate::error::KnowledgeError;
use crate::service::{DocumentInput, Knowledge, SearchMode, SearchRequest};

fn to_wit(e: KnowledgeError) -> Error {
    match e {
        KnowledgeError::UnknownCollection(name) => Error::UnknownCollection(name),
        e @ (KnowledgeError::Invalid(_) | KnowledgeError::EmbedderMismatch(_)) => {
            Error::InvalidRequest(e.to_string())
        }
        e @ (KnowledgeError::ReadOnly(_)
        | KnowledgeError::Embedding(_)
        | KnowledgeError::Storage(_)) => Error::Unavailable(e.to_string()),
    }
}

#[async_trait::async_trait]
impl KnowledgeEngine for Knowledge {
    async fn search(
        &self,
        caller: &Caller,
        collection: &str,
        query: Query,
    ) -> Result<Vec<Hit>, Error> {
        let request = SearchRequest {
            query: query.text,
            top_k: query.top_k as usize,
            filter: query.filter,
            mode: match query.mode {
                WitMode::Hybrid => SearchMode::Hybrid,
                WitMode::Vector => SearchMode::Vector,
                WitMode::Keyword => SearchMode::Keyword,
            },
        };
        let hits = Knowledge::search(self, caller, collection, &request)
            .await
            .map_err(to_wit)?;
        Ok(hits
            .into_iter()
            .map(|h| Hit {
                id: h.id,
                text: h.text,
                score: h.score,
                metadata: h.metadata,
                source: h.source,
            })
            .collect())
    }

    async fn upsert(
        &self,
        caller: &Caller,
        collection: &str,
        documents: Vec<Document>,
    ) -> Result<(), Error> {
        let documents = documents
            .into_iter()
            .map(|d| DocumentInput {
                id: d.id,
                text: d.text,
                metadata: d.metadata,
                source: None,
            })
            .collect();
        Knowledge::upsert(self, caller, collection, documents)
            .await
            .map(drop)
            .map_err(to_wit)
    }

    async fn delete(
        &self,
        _caller: &Caller,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<u32, Error> {
        Knowledge::delete(self, collection, ids)
            .await
            .map(|n| n as u32)
            .map_err(to_wit)
    }

    async fn get(
        &self,
        _caller: &Caller,
        collection: &str,
        id: &str,
    ) -> Result<Option<Document>, Error> {
        Ok(Knowledge::get(self, collection, id)
            .await
            .map_err(to_wit)?
            .map(|h| Document {
                id: h.id,
                text: h.text,
                metadata: h.metadata,
            }))
    }
}
