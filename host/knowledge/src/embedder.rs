//! Where embeddings come from: the built-in hashed n-gram embedder (the
//! default; no network, no model) or the configured LLM provider's
//! OpenAI-compatible `/embeddings`, batched and behind the same breaker,
//! retries and timeouts as chat (it goes through the host's LLM engine).
//!
//! A collection records the embedder's name and dimension when it is
//! created; vectors of two embedders are not comparable, so a collection is
//! only ever queried and written with the one it was built with.

use std::sync::Arc;

use bsm_runtime::capabilities::Caller;
use bsm_runtime::capabilities::llm::LlmEngine;

use crate::error::KnowledgeError;
use crate::hashed::{self, FeatureStats};

/// The embedder a host is configured with.
#[derive(Clone)]
pub struct Embedder {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Builtin,
    Provider {
        engine: Arc<dyn LlmEngine>,
        model: Option<String>,
        batch: usize,
    },
}

impl Embedder {
    /// The built-in hashed n-gram embedder ([`hashed`]).
    pub fn builtin() -> Self {
        Self {
            kind: Kind::Builtin,
        }
    }

    /// The LLM provider's `/embeddings` with `model` (the provider's default
    /// when `None`), `batch` texts per request.
    pub fn provider(engine: Arc<dyn LlmEngine>, model: Option<String>, batch: usize) -> Self {
        Self {
            kind: Kind::Provider {
                engine,
                model,
                batch: batch.max(1),
            },
        }
    }

    /// The name recorded with a collection.
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::Builtin => hashed::NAME.to_string(),
            Kind::Provider { model, .. } => {
                format!("provider:{}", model.as_deref().unwrap_or("default"))
            }
        }
    }

    /// The dimension, when known without asking the provider.
    pub fn known_dimension(&self) -> Option<usize> {
        match self.kind {
            Kind::Builtin => Some(hashed::DIMENSION),
            Kind::Provider { .. } => None,
        }
    }

    /// Whether queries are weighted by the collection's feature statistics.
    pub fn uses_feature_stats(&self) -> bool {
        matches!(self.kind, Kind::Builtin)
    }

    /// Unit-length embeddings of documents, in order.
    pub async fn embed_documents(
        &self,
        caller: &Caller,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, KnowledgeError> {
        match &self.kind {
            Kind::Builtin => Ok(texts.iter().map(|t| hashed::embed_document(t)).collect()),
            Kind::Provider {
                engine,
                model,
                batch,
            } => {
                let mut out = Vec::with_capacity(texts.len());
                for chunk in texts.chunks(*batch) {
                    let vectors = engine
                        .embed(caller, model.clone(), chunk.to_vec())
                        .await
                        .map_err(|e| KnowledgeError::Embedding(format!("{e:?}")))?;
                    if vectors.len() != chunk.len() {
                        return Err(KnowledgeError::Embedding(format!(
                            "the provider answered {} vectors for {} texts",
                            vectors.len(),
                            chunk.len()
                        )));
                    }
                    out.extend(vectors.into_iter().map(|mut v| {
                        hashed::normalise(&mut v);
                        v
                    }));
                }
                Ok(out)
            }
        }
    }

    /// The unit-length embedding of a query. The built-in embedder weights
    /// queries by a collection's statistics; without them (here) it treats
    /// every feature alike.
    pub async fn embed_query(
        &self,
        caller: &Caller,
        text: &str,
    ) -> Result<Vec<f32>, KnowledgeError> {
        match &self.kind {
            Kind::Builtin => Ok(hashed::embed_query(text, &FeatureStats::default())),
            Kind::Provider { .. } => Ok(self
                .embed_documents(caller, &[text.to_string()])
                .await?
                .pop()
                .unwrap_or_default()),
        }
    }
}
