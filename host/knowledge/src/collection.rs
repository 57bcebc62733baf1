//! One loaded collection: its vector and keyword indexes, and what searches
//! need in memory (metadata for filters, feature statistics for the built-in
//! embedder's query weighting), kept in step with the database.
//!
//! Opening checks each index file against the database generation and
//! rebuilds what is missing, damaged or stale from the stored documents and
//! embeddings (never re-embedding), saying why in the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::KnowledgeError;
use crate::hashed::FeatureStats;
use crate::keyword::{KeywordDoc, KeywordIndex};
use crate::store::{Applied, CollectionRow, Metadata, NewDocument, Store, StoredDocument};
use crate::vector_index::{GraphParams, VectorIndex};

const VECTORS_FILE: &str = "vectors.usearch";
const VECTORS_META: &str = "vectors.json";
const KEYWORD_DIR: &str = "keyword";
/// Documents per keyword commit while rebuilding.
const REBUILD_BATCH: usize = 4_096;

/// What the vector file reflects.
#[derive(Debug, Serialize, Deserialize)]
struct VectorsMeta {
    generation: u64,
    count: usize,
    dimension: usize,
}

/// A collection ready to search and write.
pub struct Collection {
    pub name: String,
    pub embedder: String,
    pub dimension: usize,
    dir: PathBuf,
    pub(crate) vectors: VectorIndex,
    pub(crate) keyword: KeywordIndex,
    metadata: RwLock<HashMap<u64, Metadata>>,
    stats: RwLock<FeatureStats>,
    generation: AtomicU64,
    saved_generation: AtomicU64,
    /// One save at a time: the background saver and an explicit flush
    /// share the temporary file beside the vector file, and one renaming it
    /// away under the other failed the other's save.
    saving: std::sync::Mutex<()>,
    /// One write at a time, so the indexes apply writes in generation order.
    pub(crate) write: tokio::sync::Mutex<()>,
}

impl Collection {
    /// Loads a collection recorded in `store`, its index files from `dir`,
    /// rebuilding those that do not match the database.
    pub fn open(
        store: &Store,
        row: &CollectionRow,
        dir: &Path,
        params: GraphParams,
        feature_stats: bool,
        read_only: bool,
    ) -> Result<Self, KnowledgeError> {
        if !read_only {
            std::fs::create_dir_all(dir)
                .map_err(|e| KnowledgeError::Storage(format!("creating {}: {e}", dir.display())))?;
        }
        let vectors_path = dir.join(VECTORS_FILE);
        let loaded = load_vectors(dir, row, params);
        let keyword_dir = dir.join(KEYWORD_DIR);
        let keyword = match KeywordIndex::open(&keyword_dir) {
            Ok(k) if !read_only || k.generation().unwrap_or(0) == row.generation => k,
            // A reader may not rewrite the files: it rebuilds in memory.
            Ok(_) => KeywordIndex::in_memory()?,
            Err(_) if read_only => KeywordIndex::in_memory()?,
            Err(e) => {
                tracing::warn!(collection = %row.name, error = %e,
                    "keyword index unreadable; rebuilding it from the stored documents");
                let _ = std::fs::remove_dir_all(&keyword_dir);
                KeywordIndex::open(&keyword_dir)?
            }
        };

        let mut metadata = HashMap::new();
        let mut stats = FeatureStats::default();
        let mut count = 0usize;
        // Decided after counting: the loaded vectors must hold every document.
        let mut vector_rebuild: Option<VectorIndex> = None;
        let vectors_ok = match &loaded {
            Ok(v) => Some(v.len()),
            Err(reason) => {
                if read_only {
                    // The writing process is at work: expected, rebuilt in memory.
                    tracing::debug!(collection = %row.name, %reason, "vector index rebuilt in memory");
                } else {
                    tracing::warn!(collection = %row.name, %reason, "rebuilding the vector index from the stored embeddings");
                }
                vector_rebuild = Some(VectorIndex::new(row.dimension, params)?);
                None
            }
        };
        let keyword_generation = keyword.generation().unwrap_or(0);
        let keyword_rebuild = keyword_generation != row.generation || row.generation == 0;
        if keyword_rebuild && row.generation != 0 && !read_only {
            tracing::warn!(collection = %row.name, index = keyword_generation, database = row.generation,
                "keyword index is stale; rebuilding it from the stored documents");
        }
        let mut pending: Vec<StoredDocument> = Vec::new();
        let mut first_batch = true;
        let mut flush_keyword = |pending: &mut Vec<StoredDocument>, last: bool| {
            let docs: Vec<KeywordDoc<'_>> = pending
                .iter()
                .map(|d| KeywordDoc {
                    key: d.key,
                    text: &d.text,
                    metadata: &d.metadata,
                })
                .collect();
            let generation = if last { row.generation } else { 0 };
            let result = keyword.apply(first_batch, &[], &docs, generation);
            first_batch = false;
            pending.clear();
            result
        };
        let restore = loaded.as_ref().ok().filter(|_| vector_rebuild.is_none());
        store.scan(&row.name, |doc, embedding| {
            count += 1;
            if let Some(index) = restore {
                index.restore_full(doc.key, &embedding);
            }
            if feature_stats {
                stats.add(&doc.text);
            }
            if let Some(index) = &vector_rebuild {
                index.add(&[(doc.key, &embedding)])?;
            }
            metadata.insert(doc.key, doc.metadata.clone());
            if keyword_rebuild {
                pending.push(doc);
                if pending.len() >= REBUILD_BATCH {
                    flush_keyword(&mut pending, false)?;
                }
            }
            Ok(())
        })?;
        if keyword_rebuild {
            flush_keyword(&mut pending, true)?;
        }

        let vectors = match (loaded, vector_rebuild) {
            (_, Some(rebuilt)) => {
                if !read_only {
                    rebuilt.save_atomically(&vectors_path)?;
                    write_meta(dir, row.generation, rebuilt.len(), row.dimension)?;
                }
                rebuilt
            }
            (Ok(v), None) if vectors_ok == Some(count) => v,
            (Ok(_), None) => {
                if !read_only {
                    tracing::warn!(collection = %row.name, "vector index holds another number of documents; rebuilding");
                }
                let rebuilt = VectorIndex::new(row.dimension, params)?;
                store.scan(&row.name, |doc, embedding| {
                    rebuilt.add(&[(doc.key, &embedding)])
                })?;
                rebuilt.save_atomically(&vectors_path)?;
                write_meta(dir, row.generation, rebuilt.len(), row.dimension)?;
                rebuilt
            }
            (Err(_), None) => unreachable!("a failed load always rebuilds"),
        };

        Ok(Self {
            name: row.name.clone(),
            embedder: row.embedder.clone(),
            dimension: row.dimension,
            dir: dir.to_path_buf(),
            vectors,
            keyword,
            metadata: RwLock::new(metadata),
            stats: RwLock::new(stats),
            generation: AtomicU64::new(row.generation),
            saved_generation: AtomicU64::new(row.generation),
            saving: std::sync::Mutex::new(()),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Documents in the collection.
    pub fn len(&self) -> usize {
        self.read_metadata().len()
    }

    /// The database generation the in-memory state reflects.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read_metadata(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Metadata>> {
        self.metadata.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the document `key` exists and has every `filter` pair.
    pub fn matches(&self, key: u64, filter: &Metadata) -> bool {
        self.read_metadata().get(&key).is_some_and(|meta| {
            filter
                .iter()
                .all(|(k, v)| meta.iter().any(|(mk, mv)| mk == k && mv == v))
        })
    }

    /// The statistics the built-in embedder weights queries with.
    pub fn with_stats<R>(&self, f: impl FnOnce(&FeatureStats) -> R) -> R {
        f(&self.stats.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Brings the indexes and memory in step with a committed write.
    pub fn apply(
        &self,
        applied: &Applied,
        written: &[NewDocument],
        feature_stats: bool,
    ) -> Result<(), KnowledgeError> {
        let removed: Vec<u64> = applied.removed.iter().map(|(k, _)| *k).collect();
        let added: Vec<(u64, &[f32])> = applied
            .added
            .iter()
            .zip(written)
            .map(|(k, d)| (*k, d.embedding.as_slice()))
            .collect();
        // New versions first, then the old ones out: a concurrent search
        // finds a replaced document at least once, never zero times.
        {
            let mut metadata = self.metadata.write().unwrap_or_else(|e| e.into_inner());
            for (key, doc) in applied.added.iter().zip(written) {
                metadata.insert(*key, doc.metadata.clone());
            }
        }
        self.vectors.add(&added)?;
        self.vectors.remove(&removed)?;
        let docs: Vec<KeywordDoc<'_>> = applied
            .added
            .iter()
            .zip(written)
            .map(|(key, d)| KeywordDoc {
                key: *key,
                text: &d.text,
                metadata: &d.metadata,
            })
            .collect();
        self.keyword
            .apply(false, &removed, &docs, applied.generation)?;
        {
            let mut metadata = self.metadata.write().unwrap_or_else(|e| e.into_inner());
            for key in &removed {
                metadata.remove(key);
            }
        }
        if feature_stats {
            let mut stats = self.stats.write().unwrap_or_else(|e| e.into_inner());
            for (_, text) in &applied.removed {
                stats.remove(text);
            }
            for d in written {
                stats.add(&d.text);
            }
        }
        self.generation.store(applied.generation, Ordering::Release);
        Ok(())
    }

    /// Whether the vector file lags behind the database.
    pub fn needs_save(&self) -> bool {
        self.saved_generation.load(Ordering::Acquire) != self.generation()
    }

    /// Writes the vector file (and what it reflects) if it lags behind.
    pub fn save(&self) -> Result<(), KnowledgeError> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation();
        if self.saved_generation.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        let count = self.vectors.len();
        self.vectors.save_atomically(&self.dir.join(VECTORS_FILE))?;
        write_meta(&self.dir, generation, count, self.dimension)?;
        self.saved_generation.store(generation, Ordering::Release);
        Ok(())
    }
}

fn write_meta(
    dir: &Path,
    generation: u64,
    count: usize,
    dimension: usize,
) -> Result<(), KnowledgeError> {
    let meta = VectorsMeta {
        generation,
        count,
        dimension,
    };
    crate::files::write_atomically(
        &dir.join(VECTORS_META),
        serde_json::to_string(&meta).unwrap_or_default().as_bytes(),
    )
}

/// The saved vector index, if it is there, readable and of this generation.
fn load_vectors(
    dir: &Path,
    row: &CollectionRow,
    params: GraphParams,
) -> Result<VectorIndex, String> {
    let path = dir.join(VECTORS_FILE);
    if row.generation == 0 {
        return VectorIndex::new(row.dimension, params).map_err(|e| e.to_string());
    }
    if !path.exists() {
        return Err(format!("{} is missing", path.display()));
    }
    let meta: VectorsMeta = std::fs::read(dir.join(VECTORS_META))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{} is unreadable: {e}", dir.join(VECTORS_META).display()))?;
    if meta.generation != row.generation {
        return Err(format!(
            "{} reflects generation {} of the collection, the database is at {}",
            path.display(),
            meta.generation,
            row.generation
        ));
    }
    let index = VectorIndex::load(&path, row.dimension, params).map_err(|e| e.to_string())?;
    if index.len() != meta.count {
        return Err(format!(
            "{} holds {} vectors, {} were written",
            path.display(),
            index.len(),
            meta.count
        ));
    }
    Ok(index)
}
