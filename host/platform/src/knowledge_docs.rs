//! Knowledge documents of an original BSM layout (`data/knowledge/index.json`
//! listing markdown files), loaded through a stale-while-revalidate cache:
//! readers never wait on the disk once a directory is warm, and a document
//! edited on disk shows up after the soft TTL without a restart.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use bsm_cache::{StatsSnapshot, SwrCache, SwrSettings};

/// One knowledge document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnowledgeDoc {
    /// The file name as listed in `index.json`.
    pub name: String,
    pub text: String,
}

#[derive(Deserialize)]
struct Index {
    documents: Vec<String>,
}

/// Cached access to knowledge directories.
pub struct KnowledgeLibrary {
    cache: SwrCache<PathBuf, Arc<Vec<KnowledgeDoc>>>,
}

impl KnowledgeLibrary {
    pub fn new(settings: &SwrSettings) -> Self {
        let loader = Arc::new(
            |dir: PathBuf| -> futures_util::future::BoxFuture<
                'static,
                anyhow::Result<Arc<Vec<KnowledgeDoc>>>,
            > { Box::pin(async move { load_dir(&dir).await.map(Arc::new) }) },
        );
        Self {
            cache: SwrCache::new("knowledge", settings.max_entries, settings.ttl(), loader),
        }
    }

    /// The documents of `dir`, in index order.
    pub async fn documents(
        &self,
        dir: &Path,
    ) -> Result<Arc<Vec<KnowledgeDoc>>, Arc<anyhow::Error>> {
        self.cache.get(dir.to_path_buf()).await
    }

    /// All documents of `dir` joined into one text, as prompts use them.
    pub async fn joined(&self, dir: &Path) -> Result<String, Arc<anyhow::Error>> {
        let docs = self.documents(dir).await?;
        Ok(docs
            .iter()
            .map(|d| d.text.trim())
            .collect::<Vec<_>>()
            .join("\n\n---\n\n"))
    }

    pub async fn invalidate(&self, dir: &Path) {
        self.cache.invalidate(&dir.to_path_buf()).await;
    }

    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.cache.stats()
    }
}

/// Reads `index.json` and every document it lists. A listed name that would
/// leave the directory is refused; a missing document is skipped with a warning.
async fn load_dir(dir: &Path) -> anyhow::Result<Vec<KnowledgeDoc>> {
    let index_path = dir.join("index.json");
    let index = tokio::fs::read(&index_path)
        .await
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let index: Index = serde_json::from_slice(&index)
        .with_context(|| format!("{} is not {{\"documents\": [...]}}", index_path.display()))?;
    let mut docs = Vec::with_capacity(index.documents.len());
    for name in index.documents {
        let relative = Path::new(&name);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            anyhow::bail!(
                "{}: document name {name:?} leaves the knowledge directory",
                index_path.display()
            );
        }
        match tokio::fs::read_to_string(dir.join(relative)).await {
            Ok(text) => docs.push(KnowledgeDoc { name, text }),
            Err(e) => {
                tracing::warn!(document = %name, dir = %dir.display(), error = %e, "knowledge document listed but not readable; skipped")
            }
        }
    }
    Ok(docs)
}

/// The knowledge of the served BSM layout: its directory (if it has one)
/// read through a [`KnowledgeLibrary`].
pub struct KnowledgeSource {
    library: KnowledgeLibrary,
    dir: Option<PathBuf>,
}

impl KnowledgeSource {
    pub fn new(library: KnowledgeLibrary, dir: Option<PathBuf>) -> Self {
        Self { library, dir }
    }

    /// All documents as one text ("" without a directory, or when it cannot
    /// be read: a job goes on without knowledge rather than failing).
    pub async fn text(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        match self.library.joined(dir).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "knowledge could not be loaded; continuing without");
                String::new()
            }
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.library.stats()
    }

    pub fn invalidate_all(&self) {
        self.library.invalidate_all();
    }
}
