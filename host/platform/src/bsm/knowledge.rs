//! The knowledge of a served BSM directory (`data/knowledge`), kept in one
//! collection of the knowledge service: ingested at start and again when
//! the directory changes (incrementally: unchanged files cost a hash), and
//! searched by each agent for its own input instead of being pasted whole
//! into every prompt.

use std::path::PathBuf;

use bsm_knowledge::Knowledge;

/// Where a BSM directory's knowledge goes and how agents use it.
#[derive(Clone)]
pub struct BsmKnowledge {
    pub knowledge: Knowledge,
    /// The layout's `data/knowledge`.
    pub dir: PathBuf,
    pub binding: KnowledgeBinding,
}

/// What a BSM agent is told about its knowledge (its `prompt-agent` config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnowledgeBinding {
    pub collection: String,
    pub top_k: u32,
}

impl BsmKnowledge {
    /// Ingests the directory, logging what changed; a failure is logged and
    /// leaves the collection as it was (agents then answer without it).
    pub async fn ingest_logged(&self) {
        if self.knowledge.is_read_only() {
            tracing::info!(dir = %self.dir.display(), "BSM knowledge not ingested: another process writes the collections");
            return;
        }
        match self
            .knowledge
            .ingest_dir(&self.dir, &self.binding.collection, |_| {})
            .await
        {
            Ok(summary) => {
                for skipped in &summary.skipped {
                    tracing::warn!(file = %skipped.path, reason = %skipped.reason, "knowledge file skipped");
                }
                tracing::info!(
                    collection = %summary.collection,
                    files = summary.files,
                    indexed = summary.indexed,
                    unchanged = summary.unchanged,
                    removed = summary.removed,
                    chunks = summary.chunks,
                    "BSM knowledge ingested"
                );
            }
            Err(e) => tracing::warn!(
                dir = %self.dir.display(), error = %e,
                "BSM knowledge not ingested; agents answer without it"
            ),
        }
    }
}
