//! # bsm-knowledge: document collections for agents, plugins and the API
//!
//! The original BSM scored every stored item against a query by word-set
//! Jaccard similarity, O(n·m) per query. Here a collection is searched
//! through an HNSW index over embeddings ([`vector_index`], usearch) fused by
//! reciprocal rank ([`fusion`]) with BM25 keyword ranking ([`keyword`],
//! tantivy), in well under a millisecond at 100,000 documents.
//!
//! - The database ([`store`]) is the truth: documents, metadata, embeddings.
//!   Index files are derived, written atomically, checked against the
//!   database's generation at start and rebuilt when damaged or stale.
//! - Embeddings come from the built-in hashed n-gram embedder ([`hashed`],
//!   no network) or the LLM provider ([`embedder`]); a collection is bound to
//!   the one it was built with.
//! - Query embeddings are cached (single flight) per collection and
//!   invalidated by its writes.
//! - [`Knowledge::ingest_dir`] chunks markdown folders ([`chunk`]), skipping
//!   unchanged files by content hash.
//!
//! [`Knowledge`] implements the runtime's `KnowledgeEngine`, which is how
//! plugins reach it.

pub mod chunk;
mod collection;
pub mod embedder;
mod engine;
mod error;
mod files;
pub mod fusion;
pub mod hashed;
pub mod ingest;
pub mod keyword;
mod service;
pub mod store;
pub mod synthetic;
pub mod vector_index;

pub use embedder::Embedder;
pub use error::KnowledgeError;
pub use ingest::{IngestEvent, IngestSummary};
pub use service::{
    CollectionInfo, DocumentInput, Knowledge, KnowledgeSettings, SearchHit, SearchMode,
    SearchRequest,
};
pub use store::Metadata;
pub use vector_index::GraphParams;
