//! The vector-index benchmark of BENCHMARKS.md ("Knowledge"), one thread:
//!
//! 1. a fixed-seed clustered collection (`synthetic::clustered`), built into
//!    the HNSW index: build time and index memory;
//! 2. exact brute-force top-10 of every query (the reference), timed;
//! 3. the index at several `ef` values: recall@10, queries/s, p50/p99;
//! 4. the base and query vectors written as raw little-endian f32 files
//!    (with the exact answers) for `hnswlib_peer.py`, so the peer library
//!    is measured on the same data in the same run;
//! 5. the original BSM's word-set Jaccard scan (ported from its Node code)
//!    against the whole knowledge service (hybrid search, embedding
//!    included) at 1,000 and 10,000 texts.
//!
//!   cargo run --release -p bsm-knowledge --example ann_bench -- [N] [DIM] [OUT_DIR]

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use bsm_knowledge::synthetic::{Rng, clustered};
use bsm_knowledge::vector_index::{GraphParams, VectorIndex};
use bsm_knowledge::{
    DocumentInput, Embedder, Knowledge, KnowledgeSettings, SearchMode, SearchRequest,
};
use bsm_runtime::capabilities::Caller;

const K: usize = 10;
const CLUSTERS: usize = 100;
const QUERIES: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn write_f32(path: &std::path::Path, rows: &[Vec<f32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for row in rows {
        for x in row {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
}

/// Exact top-`k` by inner product over every vector, in plain f32.
fn exact_f32(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
    let mut scored: Vec<(f32, u64)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u64))
        .collect();
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dim: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(384);
    let out = args.get(3).map(std::path::PathBuf::from);
    let efs: Vec<usize> = std::env::var("EFS")
        .unwrap_or_else(|_| "16,24,32,48,64,96,128".into())
        .split(',')
        .filter_map(|e| e.parse().ok())
        .collect();

    println!(
        "# {n} vectors x {dim} dims, {CLUSTERS} clusters, {QUERIES} queries, k={K}, one thread"
    );
    let data = clustered(n, dim, CLUSTERS, 7);
    // Queries are further points of the same topics (the same seed).
    let queries: Vec<Vec<f32>> = clustered(n + QUERIES, dim, CLUSTERS, 7).split_off(n);

    let params = GraphParams {
        scalar: std::env::var("SCALAR")
            .ok()
            .and_then(|s| bsm_knowledge::vector_index::Scalar::parse(&s))
            .unwrap_or_default(),
        ..GraphParams::default()
    };
    let index = VectorIndex::new(dim, params).unwrap();
    let started = Instant::now();
    for (i, v) in data.iter().enumerate() {
        index.add(&[(i as u64, v.as_slice())]).unwrap();
    }
    let build = started.elapsed();
    println!(
        "build: {:.1} s ({:.0} inserts/s), memory: graph and {:?} vectors {:.0} MB + f32 copy {:.0} MB, M={} ef_construction={}",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64(),
        params.scalar,
        index.memory_usage() as f64 / 1e6,
        (n * dim * 4) as f64 / 1e6,
        params.connectivity,
        params.expansion_add,
    );

    // The reference: an exact scan over the f32 vectors (the index may
    // store them quantised; recall is measured against full precision).
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(QUERIES);
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let r = exact_f32(&data, q, K);
            latencies.push(t.elapsed());
            r
        })
        .collect();
    latencies.sort();
    println!(
        "exact brute force (f32 scan): {:.0} queries/s, p50 {:.3} ms, p99 {:.3} ms (recall 1.000)",
        QUERIES as f64 / started.elapsed().as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );

    // The exact path the service takes for small collections.
    let started = Instant::now();
    for q in &queries {
        index.exact(q, K).unwrap();
    }
    println!(
        "index exact scan (f32, what small collections use): {:.0} queries/s",
        QUERIES as f64 / started.elapsed().as_secs_f64()
    );
    println!("| ef | recall@10 | queries/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|");
    for ef in &efs {
        index.set_expansion_search(*ef);
        // Warm-up pass, then the measured one.
        for q in queries.iter().take(100) {
            index.search(q, K, None).unwrap();
        }
        let mut latencies = Vec::with_capacity(QUERIES);
        let mut found = 0;
        let started = Instant::now();
        for (q, t) in queries.iter().zip(&truth) {
            let s = Instant::now();
            let hits = index.search(q, K, None).unwrap();
            latencies.push(s.elapsed());
            found += hits.iter().filter(|h| t.contains(&h.0)).count();
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "| {ef} | {:.3} | {:.0} | {:.3} | {:.3} |",
            found as f64 / (QUERIES * K) as f64,
            QUERIES as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }

    if std::env::var("SKIP_JACCARD").is_ok() {
        return;
    }
    if let Some(out) = &out {
        std::fs::create_dir_all(out).unwrap();
        write_f32(&out.join("base.f32"), &data);
        write_f32(&out.join("queries.f32"), &queries);
        let truth_rows: Vec<Vec<f32>> = truth
            .iter()
            .map(|t| t.iter().map(|k| *k as f32).collect())
            .collect();
        write_f32(&out.join("truth.f32"), &truth_rows);
        println!("data written to {} for the peer", out.display());
    }
    drop(index);
    drop(data);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(jaccard_against_the_service());
}

/// Texts like a knowledge base's chunks: each of 50 topics has its own
/// 40-word vocabulary; a text takes 60 words, about 70% from its topic and
/// the rest from a 2,000-word background with a skewed (Zipf-like)
/// frequency. Queries are 8 words of one topic.
fn texts(n: usize, words: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let background: Vec<String> = (0..2_000).map(|i| format!("w{i}")).collect();
    (0..n)
        .map(|_| {
            let topic = rng.next_u64() % 50;
            (0..words)
                .map(|_| {
                    if rng.uniform() < 0.7 {
                        format!("t{topic}x{}", rng.next_u64() % 40)
                    } else {
                        let u = rng.uniform().max(1e-6);
                        let rank =
                            ((background.len() as f32).powf(u) as usize).min(background.len() - 1);
                        background[rank].clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The original BSM's similarity search, ported faithfully: for every stored
/// item, its lower-cased words as a set (`new Set(text.toLowerCase().split(/\s+/))`),
/// the intersection with the query's set filtered from it and the union
/// built as a new set, as the JavaScript did; then all items sorted.
fn jaccard_search<'a>(items: &'a [String], query: &str, k: usize) -> Vec<(&'a str, f64)> {
    let words = |t: &str| -> HashSet<String> {
        t.to_lowercase()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let q = words(query);
    let mut scored: Vec<(&str, f64)> = items
        .iter()
        .map(|item| {
            let w = words(item);
            let inter: Vec<&String> = q.iter().filter(|x| w.contains(*x)).collect();
            let union: HashSet<&String> = q.iter().chain(w.iter()).collect();
            let score = if union.is_empty() {
                0.0
            } else {
                inter.len() as f64 / union.len() as f64
            };
            (item.as_str(), score)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored
}

async fn jaccard_against_the_service() {
    println!(
        "| items | Jaccard port ms/query | the index alone ms/query (x faster) | service: vector | keyword | hybrid |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let caller = Caller {
        plugin_id: "bench".into(),
        correlation_id: "bench".into(),
    };
    for n in [1_000usize, 10_000] {
        let items = texts(n, 60, 3);
        let queries: Vec<String> = texts(100, 8, 11);
        let started = Instant::now();
        let mut sink = 0usize;
        for q in &queries {
            sink += jaccard_search(&items, q, 5).len();
        }
        let jaccard = started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;

        // The index alone: the same texts embedded by the built-in embedder,
        // query vectors computed beforehand.
        let index =
            VectorIndex::new(bsm_knowledge::hashed::DIMENSION, GraphParams::default()).unwrap();
        let mut stats = bsm_knowledge::hashed::FeatureStats::default();
        for (i, t) in items.iter().enumerate() {
            stats.add(t);
            index
                .add(&[(i as u64, &bsm_knowledge::hashed::embed_document(t))])
                .unwrap();
        }
        let vectors: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| bsm_knowledge::hashed::embed_query(q, &stats))
            .collect();
        let started = Instant::now();
        for v in &vectors {
            sink += index.search(v, 5, None).unwrap().len();
        }
        let index_only = started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
        drop(index);

        let dir = tempfile::tempdir().unwrap();
        let k = Knowledge::open(
            dir.path(),
            Embedder::builtin(),
            KnowledgeSettings::default(),
        )
        .await
        .unwrap();
        for (i, chunk) in items.chunks(1_000).enumerate() {
            let docs = chunk
                .iter()
                .enumerate()
                .map(|(j, t)| DocumentInput {
                    id: format!("{}", i * 1_000 + j),
                    text: t.clone(),
                    metadata: Vec::new(),
                    source: None,
                })
                .collect();
            k.upsert(&caller, "bench", docs).await.unwrap();
        }
        // Measured once the vector file is saved (no background save competes).
        k.flush().await.unwrap();
        // Each query once (cache cold), as the Jaccard scan has no cache.
        let mut per_mode = Vec::new();
        for (round, mode) in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            for q in &queries {
                let request = SearchRequest {
                    // A distinct query text per mode: no cached embedding.
                    query: format!("{q} r{round}"),
                    top_k: 5,
                    filter: Vec::new(),
                    mode,
                };
                sink += k.search(&caller, "bench", &request).await.unwrap().len();
            }
            per_mode.push(started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64);
        }
        println!(
            "| {n} | {jaccard:.3} | {index_only:.4} ({:.0}x) | {:.4} ({:.0}x) | {:.4} ({:.0}x) | {:.4} ({:.0}x) |",
            jaccard / index_only,
            per_mode[0],
            jaccard / per_mode[0],
            per_mode[1],
            jaccard / per_mode[1],
            per_mode[2],
            jaccard / per_mode[2],
        );
        assert!(sink > 0);
    }
}
