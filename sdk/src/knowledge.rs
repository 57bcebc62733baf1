//! Similarity search over the host's document collections.
//!
//! ```no_run
//! use bsm_sdk::knowledge;
//! for hit in knowledge::search("bsm", "governance rules", 3).unwrap_or_default() {
//!     println!("{:.2} {}", hit.score, hit.text);
//! }
//! ```

use crate::bindings::agent::bsm::plugin::knowledge as wit;

pub use wit::{Document, Error as KnowledgeError, Hit};

/// The `top_k` documents of `collection` closest to `query`, best first.
pub fn search(collection: &str, query: &str, top_k: u32) -> Result<Vec<Hit>, KnowledgeError> {
    wit::search(collection, query, top_k)
}

/// Adds or replaces documents (by id) in a collection.
pub fn upsert(collection: &str, documents: &[Document]) -> Result<(), KnowledgeError> {
    wit::upsert(collection, documents)
}
