//! The approximate-nearest-neighbour index of a collection: HNSW through
//! `usearch` (why this crate, with the numbers: docs/ARCHITECTURE.md and
//! BENCHMARKS.md).
//!
//! Vectors are unit length, so inner product ranks as cosine similarity and
//! scores are `1 - distance`. Readers do not wait for writes: usearch
//! adds, removes and searches concurrently, so all three take the read side
//! of the lock; only growing the capacity (geometrically, rarely) takes the
//! write side, and a write holds the f32 copies' map only to insert or
//! remove its entries (microseconds, never while the graph works). usearch serves at most [`THREAD_CONTEXTS`] operations at once
//! (each needs a scratch context); a counting semaphore makes the rest wait their
//! turn instead of failing.
//!
//! The index stores vectors as i8 by default (a quarter of the memory and
//! bandwidth of f32); an f32 copy of each vector re-ranks the graph's
//! candidates, so quantisation costs no recall. Below [`EXACT_MAX`] vectors
//! an exact f32 scan is as fast as the graph and always right, so small
//! collections are searched exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Condvar, Mutex, RwLock};

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::KnowledgeError;

/// Collections up to this size are searched by exact scan: at 1,024
/// vectors of 384 dimensions the scan and the graph answer equally fast
/// (~60 µs), above it the graph wins (BENCHMARKS.md, "Knowledge").
pub const EXACT_MAX: usize = 1_024;

/// Concurrent operations usearch is prepared for.
pub const THREAD_CONTEXTS: usize = 32;

/// How the index stores vectors. The database keeps every embedding in
/// full f32 whatever the index holds, so a rebuild can change this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scalar {
    /// One byte per dimension: a quarter of f32's memory and bandwidth, and
    /// faster than f32 at the same recall on this machine (BENCHMARKS.md).
    #[default]
    I8,
    F16,
    F32,
}

impl Scalar {
    fn kind(self) -> ScalarKind {
        match self {
            Self::I8 => ScalarKind::I8,
            Self::F16 => ScalarKind::F16,
            Self::F32 => ScalarKind::F32,
        }
    }

    /// Parses `i8`, `f16` or `f32`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "i8" => Some(Self::I8),
            "f16" => Some(Self::F16),
            "f32" => Some(Self::F32),
            _ => None,
        }
    }
}

/// Graph parameters. The defaults reach recall@10 0.99 on clustered
/// 384-dimensional data at 100,000 vectors (BENCHMARKS.md, "Knowledge").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphParams {
    /// Edges per node (HNSW `M`).
    pub connectivity: usize,
    /// Candidates kept while inserting (`ef_construction`).
    pub expansion_add: usize,
    /// Candidates kept while searching (`ef`).
    pub expansion_search: usize,
    pub scalar: Scalar,
}

impl Default for GraphParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 48,
            scalar: Scalar::I8,
        }
    }
}

/// A nearest-neighbour index over unit vectors keyed by `u64`.
pub struct VectorIndex {
    dimension: usize,
    index: RwLock<Index>,
    /// Every vector in f32, for re-ranking and exact scans (4 bytes per
    /// dimension per vector beside the index's own copy).
    full: RwLock<HashMap<u64, Box<[f32]>>>,
    contexts: Contexts,
}

/// Candidates the graph proposes per wanted hit, re-ranked exactly.
pub const OVERSAMPLE: usize = 2;

/// Inner product, in eight lanes so that it vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn usearch_error(e: impl std::fmt::Display) -> KnowledgeError {
    KnowledgeError::Storage(format!("vector index: {e}"))
}

fn options(dimension: usize, params: GraphParams) -> IndexOptions {
    IndexOptions {
        dimensions: dimension,
        metric: MetricKind::IP,
        quantization: params.scalar.kind(),
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: params.expansion_search,
        multi: false,
    }
}

impl VectorIndex {
    /// An empty index.
    pub fn new(dimension: usize, params: GraphParams) -> Result<Self, KnowledgeError> {
        let index = Index::new(&options(dimension, params)).map_err(usearch_error)?;
        index
            .reserve_capacity_and_threads(64, THREAD_CONTEXTS)
            .map_err(usearch_error)?;
        Ok(Self::wrap(dimension, index))
    }

    /// The index saved at `path`; refused unless it holds vectors of
    /// `dimension` compared by inner product (a damaged or foreign file).
    /// The file holds the graph and the stored (quantised) vectors; the f32
    /// copies come back through [`VectorIndex::restore_full`].
    pub fn load(
        path: &Path,
        dimension: usize,
        params: GraphParams,
    ) -> Result<Self, KnowledgeError> {
        let path_str = path
            .to_str()
            .ok_or_else(|| usearch_error("index path is not UTF-8"))?;
        let meta = Index::metadata(path_str).map_err(usearch_error)?;
        if meta.dimensions as usize != dimension
            || meta.metric != MetricKind::IP
            || meta.quantization != params.scalar.kind()
        {
            return Err(usearch_error(format!(
                "{} holds {}-dimensional {:?} vectors, expected {dimension}-dimensional {:?}",
                path.display(),
                meta.dimensions,
                meta.quantization,
                params.scalar
            )));
        }
        let index = Index::new(&options(dimension, params)).map_err(usearch_error)?;
        index.load(path_str).map_err(usearch_error)?;
        index.change_expansion_search(params.expansion_search);
        index.change_expansion_add(params.expansion_add);
        let capacity = index.capacity().max(64);
        index
            .reserve_capacity_and_threads(capacity, THREAD_CONTEXTS)
            .map_err(usearch_error)?;
        Ok(Self::wrap(dimension, index))
    }

    fn wrap(dimension: usize, index: Index) -> Self {
        Self {
            dimension,
            index: RwLock::new(index),
            full: RwLock::new(HashMap::new()),
            contexts: Contexts::new(THREAD_CONTEXTS),
        }
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Vectors present (removed ones not counted).
    pub fn len(&self) -> usize {
        self.read().size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index holds in memory.
    pub fn memory_usage(&self) -> usize {
        self.read().memory_usage()
    }

    /// Candidates kept while searching: higher is slower and more exact.
    pub fn set_expansion_search(&self, ef: usize) {
        self.read().change_expansion_search(ef);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, vector: &[f32]) -> Result<(), KnowledgeError> {
        if vector.len() != self.dimension {
            return Err(KnowledgeError::Invalid(format!(
                "a {}-dimensional vector for a {}-dimensional index",
                vector.len(),
                self.dimension
            )));
        }
        Ok(())
    }

    /// Makes room for `additional` more vectors (doubling), under the write lock.
    fn grow_for(&self, additional: usize) -> Result<(), KnowledgeError> {
        let needed = {
            let index = self.read();
            let needed = index.size() + additional;
            if needed <= index.capacity() {
                return Ok(());
            }
            needed
        };
        let index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if needed > index.capacity() {
            let capacity = needed.max(index.capacity() * 2).max(64);
            index
                .reserve_capacity_and_threads(capacity, THREAD_CONTEXTS)
                .map_err(usearch_error)?;
        }
        Ok(())
    }

    /// Adds vectors under new keys.
    pub fn add(&self, entries: &[(u64, &[f32])]) -> Result<(), KnowledgeError> {
        for (_, v) in entries {
            self.check(v)?;
        }
        self.grow_for(entries.len())?;
        let index = self.read();
        for (key, vector) in entries {
            let _context = self.contexts.acquire();
            index.add(*key, vector).map_err(usearch_error)?;
        }
        let mut full = self.full.write().unwrap_or_else(|e| e.into_inner());
        for (key, vector) in entries {
            full.insert(*key, (*vector).into());
        }
        Ok(())
    }

    /// Removes vectors by key (absent keys are ignored).
    pub fn remove(&self, keys: &[u64]) -> Result<(), KnowledgeError> {
        let index = self.read();
        for key in keys {
            let _context = self.contexts.acquire();
            index.remove(*key).map_err(usearch_error)?;
        }
        let mut full = self.full.write().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            full.remove(key);
        }
        Ok(())
    }

    /// Up to `k` nearest keys with their cosine similarity, best first.
    /// `allow` keeps only the keys it accepts (metadata filters).
    ///
    /// The graph (over the stored, possibly quantised vectors) proposes
    /// [`OVERSAMPLE`] times `k` candidates; they are ranked again by the
    /// exact f32 similarity, which restores what quantisation blurs.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>, KnowledgeError> {
        self.check(query)?;
        let index = self.read();
        let size = index.size();
        if size == 0 || k == 0 {
            return Ok(Vec::new());
        }
        if size <= EXACT_MAX {
            drop(index);
            return Ok(self.scan(query, k, allow));
        }
        let wanted = (k * OVERSAMPLE).max(k + 10);
        let matches = {
            let _context = self.contexts.acquire();
            match allow {
                None => index.search(query, wanted),
                Some(allow) => index.filtered_search(query, wanted, allow),
            }
            .map_err(usearch_error)?
        };
        drop(index);
        let full = self.full.read().unwrap_or_else(|e| e.into_inner());
        let mut ranked: Vec<(u64, f32)> = matches
            .keys
            .into_iter()
            .filter(|key| allow.is_none_or(|allow| allow(*key)))
            .filter_map(|key| full.get(&key).map(|v| (key, dot(v, query))))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        Ok(ranked)
    }

    /// Exact top-`k` by scanning every vector in f32 (small collections,
    /// and the reference for recall).
    pub fn exact(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, KnowledgeError> {
        self.check(query)?;
        Ok(self.scan(query, k, None))
    }

    fn scan(
        &self,
        query: &[f32],
        k: usize,
        allow: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        let full = self.full.read().unwrap_or_else(|e| e.into_inner());
        let mut scored: Vec<(u64, f32)> = full
            .iter()
            .filter(|(key, _)| allow.is_none_or(|allow| allow(**key)))
            .map(|(key, v)| (*key, dot(v, query)))
            .collect();
        let order = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, order);
            scored.truncate(k);
        }
        scored.sort_by(order);
        scored
    }

    /// Keeps the f32 copy of a vector the loaded index file already holds
    /// (quantised): the collection hands them over from the database.
    pub fn restore_full(&self, key: u64, vector: &[f32]) {
        self.full
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, vector.into());
    }

    /// Writes the index to `path` atomically: a temporary file beside it,
    /// fsynced, renamed over `path`, and the directory fsynced. A crash
    /// leaves either the old file or the new one, never half of one.
    pub fn save_atomically(&self, path: &Path) -> Result<(), KnowledgeError> {
        let tmp = path.with_extension("usearch.tmp");
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| usearch_error("index path is not UTF-8"))?;
        {
            let index = self.read();
            let _context = self.contexts.acquire();
            index.save(tmp_str).map_err(usearch_error)?;
        }
        crate::files::sync_and_rename(&tmp, path)
    }
}

/// A counting semaphore for usearch's scratch contexts (blocking: the
/// operations it guards are short and synchronous).
struct Contexts {
    free: Mutex<usize>,
    freed: Condvar,
}

struct ContextGuard<'a>(&'a Contexts);

impl Contexts {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> ContextGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        ContextGuard(self)
    }
}

impl Drop for ContextGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut rng = fastrand_like(seed);
        let mut v: Vec<f32> = (0..dim).map(|_| rng() - 0.5).collect();
        crate::hashed::normalise(&mut v);
        v
    }

    /// A tiny deterministic generator (the index tests need no crate for it).
    fn fastrand_like(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn finds_itself_grows_past_its_capacity_and_forgets_removed_keys() {
        let index = VectorIndex::new(16, GraphParams::default()).unwrap();
        let vectors: Vec<Vec<f32>> = (1..=300).map(|i| unit(i, 16)).collect();
        let entries: Vec<(u64, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, v.as_slice()))
            .collect();
        index.add(&entries).unwrap();
        assert_eq!(index.len(), 300);
        let hits = index.search(&vectors[41], 3, None).unwrap();
        assert_eq!(hits[0].0, 42);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        index.remove(&[42]).unwrap();
        let hits = index.search(&vectors[41], 3, None).unwrap();
        assert!(hits.iter().all(|(k, _)| *k != 42));
        assert_eq!(index.len(), 299);
        let even = |k: u64| k.is_multiple_of(2);
        let hits = index.search(&vectors[9], 5, Some(&even)).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|(k, _)| k % 2 == 0));
        assert!(
            index.add(&[(1000, &[0.0; 3][..])]).is_err(),
            "wrong dimension"
        );
    }

    #[test]
    fn a_saved_index_loads_identically_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.usearch");
        let index = VectorIndex::new(8, GraphParams::default()).unwrap();
        let vectors: Vec<Vec<f32>> = (1..=50).map(|i| unit(i, 8)).collect();
        let entries: Vec<(u64, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.as_slice()))
            .collect();
        index.add(&entries).unwrap();
        index.save_atomically(&path).unwrap();
        let loaded = VectorIndex::load(&path, 8, GraphParams::default()).unwrap();
        assert_eq!(loaded.len(), 50);
        for (key, v) in &entries {
            loaded.restore_full(*key, v);
        }
        assert_eq!(
            loaded.search(&vectors[3], 5, None).unwrap(),
            index.search(&vectors[3], 5, None).unwrap()
        );
        assert!(VectorIndex::load(&path, 9, GraphParams::default()).is_err());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(VectorIndex::load(&path, 8, GraphParams::default()).is_err());
    }
}
