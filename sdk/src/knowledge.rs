//! Search over the host's document collections: nearest neighbours of the
//! query's embedding fused with BM25 keyword ranking (the host embeds the
//! texts, so a plugin never handles vectors or keys).
//!
//! ```no_run
//! use bsm_sdk::knowledge::{self, Document, Query, SearchMode};
//!
//! // The simple case: the best three documents for a question (hybrid mode).
//! for hit in knowledge::search("bsm", "governance rules", 3).unwrap_or_default() {
//!     println!("{:.2} {}", hit.score, hit.text);
//! }
//!
//! // Writing, then a filtered keyword search.
//! knowledge::upsert("notes", &[Document::new("n1", "Deploys freeze on Fridays").with("team", "ops")])?;
//! let hits = knowledge::query(
//!     "notes",
//!     &Query::new("deploy freeze").top_k(5).filter("team", "ops").mode(SearchMode::Keyword),
//! )?;
//! # Ok::<(), knowledge::KnowledgeError>(())
//! ```

use crate::bindings::agent::bsm::plugin::knowledge as wit;

pub use wit::{Document, Error as KnowledgeError, Hit, Query, SearchMode};

impl Document {
    /// A document without metadata.
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata key/value (searches can filter on it).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

impl Hit {
    /// The value of one metadata key, if the document has it.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Query {
    /// A hybrid search for the 5 best documents, without filter.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            top_k: 5,
            filter: Vec::new(),
            mode: SearchMode::Hybrid,
        }
    }

    /// How many hits at most.
    pub fn top_k(mut self, top_k: u32) -> Self {
        self.top_k = top_k;
        self
    }

    /// Keeps only documents whose metadata `key` equals `value` (filters add up).
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filter.push((key.into(), value.into()));
        self
    }

    /// Vector, keyword or hybrid ranking.
    pub fn mode(mut self, mode: SearchMode) -> Self {
        self.mode = mode;
        self
    }
}

/// The `top_k` documents of `collection` best matching `query` (hybrid), best first.
pub fn search(collection: &str, query: &str, top_k: u32) -> Result<Vec<Hit>, KnowledgeError> {
    wit::search(collection, &Query::new(query).top_k(top_k))
}

/// A search with filters and a mode.
pub fn query(collection: &str, query: &Query) -> Result<Vec<Hit>, KnowledgeError> {
    wit::search(collection, query)
}

/// Adds or replaces documents (by id) in a collection.
pub fn upsert(collection: &str, documents: &[Document]) -> Result<(), KnowledgeError> {
    wit::upsert(collection, documents)
}

/// Removes documents by id; answers how many existed.
pub fn delete(collection: &str, ids: &[String]) -> Result<u32, KnowledgeError> {
    wit::delete(collection, ids)
}

/// One document by id.
pub fn get(collection: &str, id: &str) -> Result<Option<Document>, KnowledgeError> {
    wit::get(collection, id)
}
