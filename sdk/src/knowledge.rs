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

///
/// ```no_run
/// use bsm_sdk::knowledge::{self, KnowledgeError};
/// let context = match knowledge::search("handbook", "release process", 3) {
///     Ok(hits) => hits.into_iter().map(|h| h.text).collect::<Vec<_>>().join("\n"),
///     Err(KnowledgeError::UnknownCollection(name)) => format!("(no collection {name})"),
///     Err(e) => return Err(bsm_sdk::AgentError::Capability(format!("knowledge: {e}"))),
/// };
/// # Ok::<(), bsm_sdk::AgentError>(())
/// ```
pub use wit::{Document, Error as KnowledgeError, Hit, Query, SearchMode};

impl Document {
    /// A document without metadata.
    ///
    /// ```
    /// let doc = bsm_sdk::knowledge::Document::new("adr-12", "We deploy on weekdays only.");
    /// assert!(doc.metadata.is_empty());
    /// ```
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata key/value (searches can filter on it).
    ///
    /// ```
    /// let doc = bsm_sdk::knowledge::Document::new("adr-12", "...").with("team", "ops");
    /// assert_eq!(doc.metadata, [("team".to_string(), "ops".to_string())]);
    /// ```
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

impl Hit {
    /// The value of one metadata key, if the document has it.
    ///
    /// ```
    /// # fn f(hit: &bsm_sdk::knowledge::Hit) {
    /// let team = hit.meta("team").unwrap_or("nobody");
    /// # }
    /// ```
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Query {
    /// A hybrid search for the 5 best documents, without filter.
    ///
    /// ```
    /// let q = bsm_sdk::knowledge::Query::new("deploy freeze");
    /// assert_eq!(q.top_k, 5);
    /// ```
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            top_k: 5,
            filter: Vec::new(),
            mode: SearchMode::Hybrid,
        }
    }

    /// How many hits at most.
    ///
    /// ```
    /// let q = bsm_sdk::knowledge::Query::new("merge policy").top_k(10);
    /// assert_eq!(q.top_k, 10);
    /// ```
    pub fn top_k(mut self, top_k: u32) -> Self {
        self.top_k = top_k;
        self
    }

    /// Keeps only documents whose metadata `key` equals `value` (filters add up).
    ///
    /// ```
    /// let q = bsm_sdk::knowledge::Query::new("on-call").filter("team", "ops");
    /// assert_eq!(q.filter.len(), 1);
    /// ```
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filter.push((key.into(), value.into()));
        self
    }

    /// Vector, keyword or hybrid ranking.
    ///
    /// ```
    /// use bsm_sdk::knowledge::{Query, SearchMode};
    /// let q = Query::new("CVE-2024-1234").mode(SearchMode::Keyword); // exact terms matter here
    /// ```
    pub fn mode(mut self, mode: SearchMode) -> Self {
        self.mode = mode;
        self
    }
}

/// The `top_k` documents of `collection` best matching `query` (hybrid), best first.
///
/// ```no_run
/// let hits = bsm_sdk::knowledge::search("handbook", "how do we release?", 3)?;
/// let context: Vec<String> = hits.iter().map(|h| format!("[{}] {}", h.id, h.text)).collect();
/// # Ok::<(), bsm_sdk::knowledge::KnowledgeError>(())
/// ```
pub fn search(collection: &str, query: &str, top_k: u32) -> Result<Vec<Hit>, KnowledgeError> {
    wit::search(collection, &Query::new(query).top_k(top_k))
}

/// A search with filters and a mode.
///
/// ```no_run
/// use bsm_sdk::knowledge::{self, Query};
/// let hits = knowledge::query("handbook", &Query::new("release").top_k(3).filter("status", "current"))?;
/// # Ok::<(), knowledge::KnowledgeError>(())
/// ```
pub fn query(collection: &str, query: &Query) -> Result<Vec<Hit>, KnowledgeError> {
    wit::search(collection, query)
}

/// Adds or replaces documents (by id) in a collection.
///
/// ```no_run
/// use bsm_sdk::knowledge::{self, Document};
/// // The manifest grants it: [capabilities.knowledge] write = ["notes"]
/// knowledge::upsert("notes", &[Document::new("pr-7", "PR 7 adds hot swap").with("kind", "summary")])?;
/// # Ok::<(), knowledge::KnowledgeError>(())
/// ```
pub fn upsert(collection: &str, documents: &[Document]) -> Result<(), KnowledgeError> {
    wit::upsert(collection, documents)
}

/// Removes documents by id; answers how many existed.
///
/// ```no_run
/// let removed = bsm_sdk::knowledge::delete("notes", &["pr-7".to_string()])?;
/// # Ok::<(), bsm_sdk::knowledge::KnowledgeError>(())
/// ```
pub fn delete(collection: &str, ids: &[String]) -> Result<u32, KnowledgeError> {
    wit::delete(collection, ids)
}

/// One document by id.
///
/// ```no_run
/// if let Some(doc) = bsm_sdk::knowledge::get("notes", "pr-7")? {
///     bsm_sdk::log::info(&doc.text);
/// }
/// # Ok::<(), bsm_sdk::knowledge::KnowledgeError>(())
/// ```
pub fn get(collection: &str, id: &str) -> Result<Option<Document>, KnowledgeError> {
    wit::get(collection, id)
}
