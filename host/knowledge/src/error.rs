//! What can go wrong with a collection, each with a stable code, so that the
//! API, the CLI and plugins tell the caller the same thing.

/// A knowledge operation that did not happen, and why.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KnowledgeError {
    /// The collection does not exist (searches never create one).
    #[error("no knowledge collection named {0:?}")]
    UnknownCollection(String),
    /// The caller's request is wrong (names, sizes, limits, filters).
    #[error("{0}")]
    Invalid(String),
    /// The collection was built with another embedder or dimension than the
    /// one asked to query or write it: mixing them would rank nonsense.
    #[error("{0}")]
    EmbedderMismatch(String),
    /// Another process writes this knowledge directory; this one may only
    /// read it.
    #[error("{0}")]
    ReadOnly(String),
    /// The embedding provider failed (after its retries and breaker).
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// The database or an index file failed.
    #[error("knowledge storage failed: {0}")]
    Storage(String),
}

impl KnowledgeError {
    /// The stable code of the error, as the API reports it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownCollection(_) => "UNKNOWN_COLLECTION",
            Self::Invalid(_) => "INVALID_REQUEST",
            Self::EmbedderMismatch(_) => "EMBEDDER_MISMATCH",
            Self::ReadOnly(_) => "KNOWLEDGE_READ_ONLY",
            Self::Embedding(_) => "EMBEDDING_FAILED",
            Self::Storage(_) => "KNOWLEDGE_STORAGE",
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<rusqlite::Error> for KnowledgeError {
    fn from(e: rusqlite::Error) -> Self {
        Self::storage(e)
    }
}

impl From<tantivy::TantivyError> for KnowledgeError {
    fn from(e: tantivy::TantivyError) -> Self {
        Self::storage(e)
    }
}
