//! The knowledge service: every collection of a data directory, with the
//! limits that keep one request from taking the server, the query-embedding
//! cache, and a background saver for the vector files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use bsm_runtime::capabilities::Caller;

use crate::chunk::ChunkSettings;
use crate::collection::Collection;
use crate::embedder::Embedder;
use crate::error::KnowledgeError;
use crate::fusion::reciprocal_rank_fusion;
use crate::store::{CollectionRow, Metadata, NewDocument, SourceChange, Store};
use crate::vector_index::GraphParams;

/// Limits and tuning of the service.
#[derive(Debug, Clone)]
pub struct KnowledgeSettings {
    /// Largest `top_k` a search may ask for.
    pub max_top_k: usize,
    /// Longest query, in characters.
    pub max_query_chars: usize,
    /// Most documents in one upsert or delete.
    pub max_batch: usize,
    /// Longest document text, in characters.
    pub max_document_chars: usize,
    /// Longest document id, in characters.
    pub max_id_chars: usize,
    /// Most metadata pairs on a document or in a filter.
    pub max_metadata_pairs: usize,
    pub graph: GraphParams,
    pub chunking: ChunkSettings,
    /// How long a written collection waits before its vector file is saved
    /// (writes in between are saved together).
    pub save_delay: Duration,
    /// Query embeddings kept in the cache.
    pub query_cache_entries: u64,
    /// Bytes of search results kept for repeated searches (0: none). An
    /// entry is keyed by the collection's generation, so a write is seen
    /// by the next search (Elasticsearch's request cache, invalidated on
    /// refresh, works the same way).
    pub result_cache_bytes: u64,
    /// Largest file ingestion reads; larger ones are skipped with a reason.
    pub max_file_bytes: u64,
}

impl Default for KnowledgeSettings {
    fn default() -> Self {
        Self {
            max_top_k: 100,
            max_query_chars: 4_096,
            max_batch: 1_000,
            max_document_chars: 100_000,
            max_id_chars: 512,
            max_metadata_pairs: 32,
            graph: GraphParams::default(),
            chunking: ChunkSettings::default(),
            save_delay: Duration::from_millis(500),
            query_cache_entries: 10_000,
            result_cache_bytes: 8 << 20,
            max_file_bytes: 8 << 20,
        }
    }
}

/// How a search ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Reciprocal rank fusion of vector and keyword ranking.
    #[default]
    Hybrid,
    Vector,
    Keyword,
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub top_k: usize,
    pub filter: Metadata,
    pub mode: SearchMode,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub text: String,
    pub score: f32,
    pub metadata: Metadata,
    pub source: Option<String>,
}

/// A document to upsert (the service embeds it).
#[derive(Debug, Clone)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    pub metadata: Metadata,
    pub source: Option<String>,
}

/// A collection as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub documents: usize,
    pub embedder: String,
    pub dimension: usize,
}

/// Query embeddings by (collection, generation, query).
type QueryCache = moka::future::Cache<(String, u64, String), Arc<Vec<f32>>>;

/// What a search's result depends on: the collection as of one generation
/// and everything the request asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResultKey {
    collection: String,
    generation: u64,
    query: String,
    top_k: usize,
    filter: Metadata,
    mode: SearchMode,
}

/// Search results by what they depend on.
type ResultCache = moka::future::Cache<ResultKey, Arc<Vec<SearchHit>>>;

/// Every collection of a data directory.
#[derive(Clone)]
pub struct Knowledge {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    pub(crate) store: Store,
    pub(crate) embedder: Embedder,
    pub(crate) settings: KnowledgeSettings,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    creating: tokio::sync::Mutex<()>,
    queries: QueryCache,
    results: ResultCache,
    save_wanted: Arc<tokio::sync::Notify>,
    /// Held while this process may write the directory: one writer process
    /// per knowledge directory, any number of readers.
    _writer_lock: Option<std::fs::File>,
}

/// Whether `name` can name a collection (it names a directory too).
pub fn check_collection_name(name: &str) -> Result<(), KnowledgeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(KnowledgeError::Invalid(format!(
            "collection name {name:?} must be 1-64 ASCII letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

impl Knowledge {
    /// Opens the collections under `dir` (created if needed), restoring each
    /// from its files or rebuilding them from the database, and starts the
    /// background saver. Needs a tokio runtime.
    pub async fn open(
        dir: &Path,
        embedder: Embedder,
        settings: KnowledgeSettings,
    ) -> Result<Self, KnowledgeError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("collections"))
            .map_err(|e| KnowledgeError::Storage(format!("creating {}: {e}", dir.display())))?;
        let writer_lock = writer_lock(&dir)?;
        let read_only = writer_lock.is_none();
        if read_only {
            tracing::info!(dir = %dir.display(), "another process writes these knowledge collections: opened for reading");
        }
        let feature_stats = embedder.uses_feature_stats();
        let graph = settings.graph;
        let (store, collections) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || -> Result<_, KnowledgeError> {
                let store = Store::open(&dir.join("knowledge.db"))?;
                let mut collections = HashMap::new();
                for row in store.collections()? {
                    let path = dir.join("collections").join(&row.name);
                    let stats = feature_stats && row.embedder == crate::hashed::NAME;
                    let c = Collection::open(&store, &row, &path, graph, stats, read_only)?;
                    collections.insert(row.name.clone(), Arc::new(c));
                }
                Ok((store, collections))
            }
        })
        .await
        .map_err(KnowledgeError::storage)??;
        let inner = Arc::new(Inner {
            dir,
            store,
            embedder,
            queries: moka::future::Cache::builder()
                .max_capacity(settings.query_cache_entries)
                .support_invalidation_closures()
                .build(),
            results: moka::future::Cache::builder()
                .max_capacity(settings.result_cache_bytes)
                .weigher(|k: &ResultKey, hits: &Arc<Vec<SearchHit>>| {
                    let bytes = k.query.len()
                        + hits
                            .iter()
                            .map(|h| {
                                64 + h.id.len()
                                    + h.text.len()
                                    + h.source.as_ref().map_or(0, String::len)
                                    + h.metadata
                                        .iter()
                                        .map(|(k, v)| k.len() + v.len())
                                        .sum::<usize>()
                            })
                            .sum::<usize>();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .support_invalidation_closures()
                .build(),
            settings,
            collections: RwLock::new(collections),
            creating: tokio::sync::Mutex::new(()),
            save_wanted: Arc::new(tokio::sync::Notify::new()),
            _writer_lock: writer_lock,
        });
        if !read_only {
            tokio::spawn(save_in_background(
                Arc::downgrade(&inner),
                inner.save_wanted.clone(),
            ));
        }
        Ok(Self { inner })
    }

    /// Whether another process writes this directory (then this one only
    /// reads what was there when it opened).
    pub fn is_read_only(&self) -> bool {
        self.inner._writer_lock.is_none()
    }

    /// The configured embedder.
    pub fn embedder(&self) -> &Embedder {
        &self.inner.embedder
    }

    pub fn settings(&self) -> &KnowledgeSettings {
        &self.inner.settings
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Vec<CollectionInfo> {
        let mut list: Vec<CollectionInfo> = self
            .read_collections()
            .values()
            .map(|c| CollectionInfo {
                name: c.name.clone(),
                documents: c.len(),
                embedder: c.embedder.clone(),
                dimension: c.dimension,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    fn read_collections(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Collection>>> {
        self.inner
            .collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn collection(&self, name: &str) -> Result<Arc<Collection>, KnowledgeError> {
        check_collection_name(name)?;
        self.read_collections()
            .get(name)
            .cloned()
            .ok_or_else(|| KnowledgeError::UnknownCollection(name.to_string()))
    }

    fn check_embedder(&self, c: &Collection) -> Result<(), KnowledgeError> {
        let ours = self.inner.embedder.name();
        if c.embedder != ours {
            return Err(KnowledgeError::EmbedderMismatch(format!(
                "collection {:?} was built with the embedder {} ({} dimensions) and this host embeds with {ours}: \
                 configure [knowledge] embedder to match, or ingest into a new collection",
                c.name, c.embedder, c.dimension
            )));
        }
        Ok(())
    }

    /// The collection `name`, created for this host's embedder if new.
    async fn collection_for_write(
        &self,
        name: &str,
        dimension: usize,
    ) -> Result<Arc<Collection>, KnowledgeError> {
        match self.collection(name) {
            Ok(c) => return Ok(c),
            Err(KnowledgeError::UnknownCollection(_)) => {}
            Err(e) => return Err(e),
        }
        let _creating = self.inner.creating.lock().await;
        if let Ok(c) = self.collection(name) {
            return Ok(c);
        }
        let row = CollectionRow {
            name: name.to_string(),
            embedder: self.inner.embedder.name(),
            dimension,
            generation: 0,
        };
        let inner = self.inner.clone();
        let collection = tokio::task::spawn_blocking(move || -> Result<_, KnowledgeError> {
            inner.store.create_collection(&row)?;
            let path = inner.dir.join("collections").join(&row.name);
            let _ = std::fs::remove_dir_all(&path); // leftovers of a deleted database
            Collection::open(
                &inner.store,
                &row,
                &path,
                inner.settings.graph,
                inner.embedder.uses_feature_stats(),
                false,
            )
        })
        .await
        .map_err(KnowledgeError::storage)??;
        let collection = Arc::new(collection);
        self.inner
            .collections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), collection.clone());
        Ok(collection)
    }

    fn check_documents(&self, docs: &[DocumentInput]) -> Result<(), KnowledgeError> {
        self.check_batch(docs.len(), "documents")?;
        let s = &self.inner.settings;
        let mut seen = std::collections::HashSet::new();
        for d in docs {
            if d.id.is_empty() || d.id.chars().count() > s.max_id_chars {
                return Err(KnowledgeError::Invalid(format!(
                    "document id {:?} must be 1-{} characters",
                    d.id, s.max_id_chars
                )));
            }
            if !seen.insert(d.id.as_str()) {
                return Err(KnowledgeError::Invalid(format!(
                    "document id {:?} appears twice in one batch",
                    d.id
                )));
            }
            if d.text.trim().is_empty() || d.text.chars().count() > s.max_document_chars {
                return Err(KnowledgeError::Invalid(format!(
                    "document {:?}: text must be non-empty and at most {} characters",
                    d.id, s.max_document_chars
                )));
            }
            self.check_metadata(&d.metadata, &format!("document {:?}", d.id))?;
        }
        Ok(())
    }

    fn check_batch(&self, n: usize, what: &str) -> Result<(), KnowledgeError> {
        let max = self.inner.settings.max_batch;
        if n > max {
            return Err(KnowledgeError::Invalid(format!(
                "{n} {what} in one batch; at most {max} are accepted"
            )));
        }
        Ok(())
    }

    fn check_metadata(&self, m: &Metadata, what: &str) -> Result<(), KnowledgeError> {
        if m.len() > self.inner.settings.max_metadata_pairs {
            return Err(KnowledgeError::Invalid(format!(
                "{what}: {} metadata pairs; at most {}",
                m.len(),
                self.inner.settings.max_metadata_pairs
            )));
        }
        if let Some((k, _)) = m
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1_024)
        {
            return Err(KnowledgeError::Invalid(format!(
                "{what}: metadata key {k:?} must be 1-128 bytes with a value of at most 1024"
            )));
        }
        Ok(())
    }

    /// Adds or replaces documents by id, creating the collection if new.
    pub async fn upsert(
        &self,
        caller: &Caller,
        collection: &str,
        documents: Vec<DocumentInput>,
    ) -> Result<usize, KnowledgeError> {
        check_collection_name(collection)?;
        self.check_documents(&documents)?;
        if documents.is_empty() {
            return Ok(0);
        }
        if let Ok(c) = self.collection(collection) {
            self.check_embedder(&c)?;
        }
        let texts: Vec<String> = documents.iter().map(|d| d.text.clone()).collect();
        let vectors = self.inner.embedder.embed_documents(caller, &texts).await?;
        let written: Vec<NewDocument> = documents
            .into_iter()
            .zip(vectors)
            .map(|(d, embedding)| NewDocument {
                id: d.id,
                text: d.text,
                metadata: d.metadata,
                source: d.source,
                embedding,
            })
            .collect();
        let count = written.len();
        self.write(collection, written, Vec::new(), Vec::new())
            .await?;
        Ok(count)
    }

    /// Applies one write to a collection: database first, then indexes.
    /// Answers how many stored documents it replaced or deleted.
    pub(crate) async fn write(
        &self,
        collection: &str,
        written: Vec<NewDocument>,
        deletes: Vec<String>,
        sources: Vec<SourceChange>,
    ) -> Result<usize, KnowledgeError> {
        let dimension = written
            .first()
            .map(|d| d.embedding.len())
            .or(self.inner.embedder.known_dimension())
            .unwrap_or(0);
        if self.is_read_only() {
            return Err(KnowledgeError::ReadOnly(format!(
                "the knowledge directory {} is written by another bsm process (a running server?): \
                 write through its API, or stop it first",
                self.inner.dir.display()
            )));
        }
        if dimension == 0 && self.collection(collection).is_err() {
            return Ok(0); // nothing to write into a collection that does not exist
        }
        let c = if written.is_empty() {
            match self.collection(collection) {
                Ok(c) => c,
                Err(KnowledgeError::UnknownCollection(_)) if sources.is_empty() => return Ok(0),
                Err(KnowledgeError::UnknownCollection(_)) => {
                    self.collection_for_write(collection, dimension).await?
                }
                Err(e) => return Err(e),
            }
        } else {
            self.collection_for_write(collection, dimension).await?
        };
        self.check_embedder(&c)?;
        if let Some(d) = written.iter().find(|d| d.embedding.len() != c.dimension) {
            return Err(KnowledgeError::EmbedderMismatch(format!(
                "document {:?} was embedded with {} dimensions; collection {:?} holds {}",
                d.id,
                d.embedding.len(),
                c.name,
                c.dimension
            )));
        }
        let _write = c.write.lock().await;
        let inner = self.inner.clone();
        let name = collection.to_string();
        let c2 = c.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<usize, KnowledgeError> {
            let applied = inner.store.apply(&name, &written, &deletes, &sources)?;
            c2.apply(&applied, &written, inner.embedder.uses_feature_stats())?;
            Ok(applied.removed.len())
        })
        .await
        .map_err(KnowledgeError::storage)??;
        let name = collection.to_string();
        self.inner
            .queries
            .invalidate_entries_if(move |k, _| k.0 == name)
            .map_err(KnowledgeError::storage)?;
        // Older generations are never asked for again; this frees them now.
        let name = collection.to_string();
        self.inner
            .results
            .invalidate_entries_if(move |k, _| k.collection == name)
            .map_err(KnowledgeError::storage)?;
        self.inner.save_wanted.notify_one();
        Ok(removed)
    }

    /// Removes documents by id; answers how many existed.
    pub async fn delete(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<usize, KnowledgeError> {
        self.check_batch(ids.len(), "ids")?;
        self.collection(collection)?;
        self.write(collection, Vec::new(), ids, Vec::new()).await
    }

    /// One document by id.
    pub async fn get(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<SearchHit>, KnowledgeError> {
        self.collection(collection)?;
        Ok(self.inner.store.get(collection, id)?.map(|d| SearchHit {
            id: d.id,
            text: d.text,
            score: 1.0,
            metadata: d.metadata,
            source: d.source,
        }))
    }

    /// The best documents for a query, best first.
    pub async fn search(
        &self,
        caller: &Caller,
        collection: &str,
        request: &SearchRequest,
    ) -> Result<Vec<SearchHit>, KnowledgeError> {
        let s = &self.inner.settings;
        if request.top_k == 0 || request.top_k > s.max_top_k {
            return Err(KnowledgeError::Invalid(format!(
                "topK must be between 1 and {}",
                s.max_top_k
            )));
        }
        if request.query.trim().is_empty() || request.query.chars().count() > s.max_query_chars {
            return Err(KnowledgeError::Invalid(format!(
                "the query must be non-empty and at most {} characters",
                s.max_query_chars
            )));
        }
        self.check_metadata(&request.filter, "filter")?;
        let c = self.collection(collection)?;
        self.check_embedder(&c)?;
        if self.inner.settings.result_cache_bytes == 0 {
            return self.search_now(caller, &c, request).await;
        }
        // The generation is read before searching: a write landing during
        // the search bumps it, and later searches miss this entry.
        let key = ResultKey {
            collection: c.name.clone(),
            generation: c.generation(),
            query: request.query.clone(),
            top_k: request.top_k,
            filter: request.filter.clone(),
            mode: request.mode,
        };
        let hits = self
            .inner
            .results
            .try_get_with(key, async {
                self.search_now(caller, &c, request).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<KnowledgeError>| (*e).clone())?;
        Ok(hits.as_ref().clone())
    }

    /// Searches the collection's indexes and reads the hits' documents.
    async fn search_now(
        &self,
        caller: &Caller,
        c: &Arc<Collection>,
        request: &SearchRequest,
    ) -> Result<Vec<SearchHit>, KnowledgeError> {
        let k = request.top_k;
        let candidates = match request.mode {
            SearchMode::Hybrid => (k * 3).max(30),
            _ => k,
        };
        let vector_hits = if request.mode != SearchMode::Keyword {
            let query = self.query_vector(caller, c, &request.query).await?;
            let filter = &request.filter;
            let allow = |key: u64| c.matches(key, filter);
            // Removed documents are already out of the index: without a
            // filter there is nothing to check per candidate.
            let allow: Option<&(dyn Fn(u64) -> bool + Sync)> =
                (!filter.is_empty()).then_some(&allow);
            c.vectors.search(&query, candidates, allow)?
        } else {
            Vec::new()
        };
        let keyword_hits = if request.mode != SearchMode::Vector {
            c.keyword
                .search(&request.query, candidates, &request.filter)?
        } else {
            Vec::new()
        };
        let ranked: Vec<(u64, f32)> = match request.mode {
            SearchMode::Vector => vector_hits,
            SearchMode::Keyword => keyword_hits,
            SearchMode::Hybrid => {
                let v: Vec<u64> = vector_hits.iter().map(|h| h.0).collect();
                let kw: Vec<u64> = keyword_hits.iter().map(|h| h.0).collect();
                reciprocal_rank_fusion(&[&v, &kw])
            }
        };
        let ranked: Vec<(u64, f32)> = ranked.into_iter().take(k).collect();
        let keys: Vec<u64> = ranked.iter().map(|r| r.0).collect();
        let mut docs = self.inner.store.by_keys(&keys)?;
        Ok(ranked
            .into_iter()
            .filter_map(|(key, score)| {
                docs.remove(&key).map(|d| SearchHit {
                    id: d.id,
                    text: d.text,
                    score,
                    metadata: d.metadata,
                    source: d.source,
                })
            })
            .collect())
    }

    /// The query's embedding, from the cache or computed once for all
    /// concurrent askers.
    async fn query_vector(
        &self,
        caller: &Caller,
        c: &Arc<Collection>,
        query: &str,
    ) -> Result<Arc<Vec<f32>>, KnowledgeError> {
        let key = (c.name.clone(), c.generation(), query.to_string());
        let embedder = &self.inner.embedder;
        self.inner
            .queries
            .try_get_with(key, async {
                if embedder.uses_feature_stats() {
                    Ok(Arc::new(c.with_stats(|stats| {
                        crate::hashed::embed_query(query, stats)
                    })))
                } else {
                    embedder.embed_query(caller, query).await.map(Arc::new)
                }
            })
            .await
            .map_err(|e: Arc<KnowledgeError>| (*e).clone())
    }

    /// Writes every vector file that lags behind its collection now (on
    /// shutdown, before a restart, in tests).
    pub async fn flush(&self) -> Result<(), KnowledgeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.save_all())
            .await
            .map_err(KnowledgeError::storage)?
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    fn save_all(&self) -> Result<(), KnowledgeError> {
        let collections: Vec<Arc<Collection>> = self
            .collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in collections.iter().filter(|c| c.needs_save()) {
            c.save()?;
        }
        Ok(())
    }
}

/// Saves lagging vector files a little after writes (so a burst of writes
/// is saved once), until the service is dropped. Holds the service only
/// while saving, so dropping it releases the directory at once.
async fn save_in_background(inner: std::sync::Weak<Inner>, wanted: Arc<tokio::sync::Notify>) {
    loop {
        let notified = tokio::time::timeout(Duration::from_secs(5), wanted.notified()).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if notified.is_err() {
            continue;
        }
        let delay = strong.settings.save_delay;
        drop(strong);
        tokio::time::sleep(delay).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || strong.save_all()).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "saving a vector index failed; it is rebuilt at the next start if needed");
        }
    }
}

/// The directory's writer lock if no other process holds it.
fn writer_lock(dir: &Path) -> Result<Option<std::fs::File>, KnowledgeError> {
    let path = dir.join("writer.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| KnowledgeError::Storage(format!("opening {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(KnowledgeError::Storage(format!(
            "locking {}: {e}",
            path.display()
        ))),
    }
}
