//! Knowledge collections end to end: the index against exact search,
//! filters, deletes, modes, persistence across restarts and damage,
//! ingestion, the labelled query set, the plugin capability and the API.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use bsm_platform::knowledge::synthetic::{Rng, clustered};
use bsm_platform::knowledge::vector_index::{GraphParams, VectorIndex};
use bsm_platform::knowledge::{
    DocumentInput, Embedder, Knowledge, KnowledgeError, KnowledgeSettings, SearchHit, SearchMode,
    SearchRequest,
};
use bsm_runtime::capabilities::{Caller, Capabilities};
use common::{loaded_runtime, request, shipped_agents};
use llm_server::LlmServer;
use server::{ADMIN_TOKEN, BsmServer, http};

fn caller() -> Caller {
    Caller {
        plugin_id: "test".into(),
        correlation_id: "test".into(),
    }
}

#[test]
fn recall_at_10_of_the_graph_is_at_least_0_95_of_exact_search_on_clustered_data() {
    // Queries: further points of the same distribution as the data.
    let mut data = clustered(20_200, 96, 50, 7);
    let queries = data.split_off(20_000);
    let index = VectorIndex::new(96, GraphParams::default()).unwrap();
    let entries: Vec<(u64, &[f32])> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.as_slice()))
        .collect();
    index.add(&entries).unwrap();
    let mut found = 0;
    for q in &queries {
        // The exact answer over the full-precision vectors.
        let mut scored: Vec<(f32, u64)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u64))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let exact: Vec<u64> = scored[..10].iter().map(|s| s.1).collect();
        let approx = index.search(q, 10, None).unwrap();
        assert_eq!(approx.len(), 10);
        found += approx.iter().filter(|h| exact.contains(&h.0)).count();
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "recall@10 = {recall:.3}");
}

fn doc(id: &str, text: &str, meta: &[(&str, &str)]) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        source: None,
    }
}

fn search(query: &str, top_k: usize, mode: SearchMode) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        top_k,
        filter: Vec::new(),
        mode,
    }
}

/// A search as `caller()`, unwrapped.
async fn find(k: &Knowledge, collection: &str, request: &SearchRequest) -> Vec<SearchHit> {
    k.search(&caller(), collection, request).await.unwrap()
}

fn ids(hits: &[SearchHit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

async fn open(dir: &Path) -> Knowledge {
    Knowledge::open(dir, Embedder::builtin(), KnowledgeSettings::default())
        .await
        .unwrap()
}

/// A labelled corpus: each query names the one document that answers it.
const CORPUS: &[(&str, &str, &str)] = &[
    (
        "deploy",
        "ops",
        "Deployments to production happen through the release pipeline on weekdays; Friday deploys need an approval.",
    ),
    (
        "rollback",
        "ops",
        "To roll back a bad release, revert the tag and redeploy the previous build from the pipeline.",
    ),
    (
        "oncall",
        "ops",
        "The on-call engineer answers pages within fifteen minutes and writes an incident report afterwards.",
    ),
    (
        "secrets",
        "security",
        "Secrets live in the vault; never commit API keys, tokens or passwords to the repository.",
    ),
    (
        "cve",
        "security",
        "A dependency with a critical CVE blocks the merge until it is patched or an exception is recorded.",
    ),
    (
        "tls",
        "security",
        "Every service terminates TLS with certificates rotated automatically every sixty days.",
    ),
    (
        "review",
        "engineering",
        "Code review checks bugs first, then tests, then clarity; formatting is left to the formatter.",
    ),
    (
        "tests",
        "engineering",
        "Every behaviour change comes with a test that fails without it; flaky tests are quarantined.",
    ),
    (
        "naming",
        "engineering",
        "Names explain what a thing is for; abbreviations are avoided except well-known ones like HTTP.",
    ),
    (
        "budget",
        "finance",
        "Cloud spending is reviewed monthly; a team over its budget by ten percent explains why.",
    ),
    (
        "travel",
        "finance",
        "Travel expenses are reimbursed within thirty days when the receipts are attached.",
    ),
    (
        "hiring",
        "people",
        "Interview loops have four conversations and a written debrief before any offer is made.",
    ),
];

const LABELLED: &[(&str, &str)] = &[
    ("how do I roll back a broken release", "rollback"),
    ("friday deployment approval", "deploy"),
    ("where do passwords and api keys go", "secrets"),
    ("critical vulnerability in a dependency", "cve"),
    ("certificate rotation", "tls"),
    ("what does a code reviewer look at first", "review"),
    ("flaky test policy", "tests"),
    ("expense receipts reimbursement", "travel"),
    ("monthly cloud spend over budget", "budget"),
    ("interview process before an offer", "hiring"),
    ("paging response time incident", "oncall"),
    ("abbreviations in names", "naming"),
];

async fn corpus(k: &Knowledge, collection: &str) {
    let docs = CORPUS
        .iter()
        .map(|(id, team, text)| doc(id, text, &[("team", team)]))
        .collect();
    assert_eq!(
        k.upsert(&caller(), collection, docs).await.unwrap(),
        CORPUS.len()
    );
}

#[tokio::test]
async fn filters_keep_only_documents_with_every_pair_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    corpus(&k, "handbook").await;
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let mut req = search("release pipeline review tests", 10, mode);
        req.filter = vec![("team".into(), "engineering".into())];
        let hits = find(&k, "handbook", &req).await;
        assert!(!hits.is_empty(), "{mode:?}");
        assert!(
            hits.iter()
                .all(|h| h.metadata.contains(&("team".into(), "engineering".into()))),
            "{mode:?}: {:?}",
            ids(&hits)
        );
        req.filter.push(("team".into(), "ops".into()));
        let none = find(&k, "handbook", &req).await;
        assert!(
            none.is_empty(),
            "contradicting pairs match nothing ({mode:?})"
        );
    }
}

#[tokio::test]
async fn a_deleted_document_is_not_found_by_any_mode_or_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    corpus(&k, "handbook").await;
    let query = "roll back a bad release";
    let before = find(&k, "handbook", &search(query, 3, SearchMode::Hybrid)).await;
    assert_eq!(before[0].id, "rollback");
    assert_eq!(
        k.delete("handbook", vec!["rollback".into(), "nope".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        k.delete("handbook", vec!["rollback".into()]).await.unwrap(),
        0
    );
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let hits = find(&k, "handbook", &search(query, 20, mode)).await;
        assert!(!ids(&hits).contains(&"rollback".to_string()), "{mode:?}");
    }
    assert!(k.get("handbook", "rollback").await.unwrap().is_none());
    assert_eq!(k.collections()[0].documents, CORPUS.len() - 1);

    // Replacing a document by id keeps one copy, with the new text.
    k.upsert(
        &caller(),
        "handbook",
        vec![doc("tls", "Certificates are now rotated weekly.", &[])],
    )
    .await
    .unwrap();
    let hits = find(
        &k,
        "handbook",
        &search("certificates rotated", 20, SearchMode::Keyword),
    )
    .await;
    assert_eq!(ids(&hits).iter().filter(|i| *i == "tls").count(), 1);
    assert!(hits[0].text.contains("weekly"));
}

#[tokio::test]
async fn a_repeated_search_sees_every_write_before_it_and_answers_as_an_uncached_one() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    let uncached_dir = tempfile::tempdir().unwrap();
    let uncached = Knowledge::open(
        uncached_dir.path(),
        Embedder::builtin(),
        KnowledgeSettings {
            result_cache_bytes: 0,
            ..KnowledgeSettings::default()
        },
    )
    .await
    .unwrap();
    corpus(&k, "handbook").await;
    corpus(&uncached, "handbook").await;
    let query = "rotate the certificates";
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let request = search(query, 5, mode);
        let first = find(&k, "handbook", &request).await;
        assert_eq!(first, find(&k, "handbook", &request).await, "{mode:?}");
        assert_eq!(
            first,
            find(&uncached, "handbook", &request).await,
            "{mode:?}"
        );
        assert!(!ids(&first).contains(&"rotation".to_string()));
    }
    // The same requests again after an upsert, then after a delete.
    for knowledge in [&k, &uncached] {
        knowledge
            .upsert(
                &caller(),
                "handbook",
                vec![doc("rotation", "Rotate the certificates every week.", &[])],
            )
            .await
            .unwrap();
    }
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let request = search(query, 5, mode);
        let hits = find(&k, "handbook", &request).await;
        assert_eq!(hits[0].id, "rotation", "{mode:?}: {:?}", ids(&hits));
        assert_eq!(
            hits,
            find(&uncached, "handbook", &request).await,
            "{mode:?}"
        );
    }
    k.delete("handbook", vec!["rotation".into()]).await.unwrap();
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let hits = find(&k, "handbook", &search(query, 5, mode)).await;
        assert!(!ids(&hits).contains(&"rotation".to_string()), "{mode:?}");
    }
}

fn reciprocal_rank(hits: &[String], want: &str) -> f64 {
    hits.iter()
        .position(|h| h == want)
        .map_or(0.0, |p| 1.0 / (p as f64 + 1.0))
}

#[tokio::test]
async fn on_the_labelled_queries_hybrid_ranks_the_answer_at_least_as_high_as_either_mode() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    corpus(&k, "handbook").await;
    let mut mrr = BTreeMap::new();
    for mode in [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid] {
        let mut total = 0.0;
        for (query, want) in LABELLED {
            let hits = find(&k, "handbook", &search(query, 10, mode)).await;
            total += reciprocal_rank(&ids(&hits), want);
        }
        mrr.insert(format!("{mode:?}"), total / LABELLED.len() as f64);
    }
    let (h, v, kw) = (mrr["Hybrid"], mrr["Vector"], mrr["Keyword"]);
    assert!(h >= v && h >= kw, "mean reciprocal rank: {mrr:?}");
    assert!(h >= 0.8, "the labelled answers are mostly first: {mrr:?}");
}

#[tokio::test]
async fn each_mode_ranks_by_its_own_signal() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    corpus(&k, "handbook").await;
    // BM25 scores are unbounded; cosine similarities are at most 1.
    let kw = find(
        &k,
        "handbook",
        &search("vault secrets", 3, SearchMode::Keyword),
    )
    .await;
    assert_eq!(kw[0].id, "secrets");
    assert!(kw[0].score > 1.0, "{}", kw[0].score);
    // A word no document has (not even stemmed): keyword finds nothing,
    // vector still ranks by shared character n-grams ("passwords").
    let kw = find(
        &k,
        "handbook",
        &search("passwordless", 3, SearchMode::Keyword),
    )
    .await;
    assert!(kw.is_empty(), "{:?}", ids(&kw));
    let vector = find(
        &k,
        "handbook",
        &search("passwordless", 3, SearchMode::Vector),
    )
    .await;
    assert_eq!(vector[0].id, "secrets");
    assert!(vector[0].score <= 1.0);
    // Hybrid scores are reciprocal-rank sums.
    let hybrid = find(
        &k,
        "handbook",
        &search("vault secrets", 3, SearchMode::Hybrid),
    )
    .await;
    assert_eq!(hybrid[0].id, "secrets");
    assert!(hybrid[0].score <= 2.0 / 61.0 + 1e-6);
}

/// Enough documents that searches go through the graph, not the exact scan.
async fn large_collection(k: &Knowledge, n: usize) {
    let words = [
        "alpha", "budget", "cache", "deploy", "error", "feature", "gateway", "health", "index",
        "journal", "kernel", "latency", "memory", "network", "outage", "policy", "queue",
        "release", "secret", "token", "upgrade", "vault", "worker", "yaml", "zone",
    ];
    let mut rng = Rng::new(42);
    let mut batch = Vec::new();
    for i in 0..n {
        let text: Vec<&str> = (0..12)
            .map(|_| words[rng.next_u64() as usize % words.len()])
            .collect();
        let team = ["a", "b", "c"][i % 3];
        batch.push(doc(&format!("d{i}"), &text.join(" "), &[("team", team)]));
        if batch.len() == 1_000 {
            k.upsert(&caller(), "big", std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        k.upsert(&caller(), "big", batch).await.unwrap();
    }
}

async fn answers(k: &Knowledge) -> Vec<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for (query, mode) in [
        ("deploy release outage", SearchMode::Vector),
        ("vault secret token", SearchMode::Keyword),
        ("memory latency worker queue", SearchMode::Hybrid),
        ("kernel upgrade zone", SearchMode::Hybrid),
    ] {
        let mut req = search(query, 10, mode);
        out.push(
            find(k, "big", &req)
                .await
                .iter()
                .map(|h| (h.id.clone(), h.score.to_bits()))
                .collect(),
        );
        req.filter = vec![("team".into(), "b".into())];
        out.push(
            find(k, "big", &req)
                .await
                .iter()
                .map(|h| (h.id.clone(), h.score.to_bits()))
                .collect(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_of_a_lagging_collection_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    large_collection(&k, 500).await;
    for i in 0..20 {
        k.upsert(
            &caller(),
            "big",
            vec![doc(&format!("extra-{i}"), "one more document", &[])],
        )
        .await
        .unwrap();
        let (a, b, c) = tokio::join!(k.flush(), k.flush(), k.flush());
        for r in [a, b, c] {
            r.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_every_collection_and_answers_identically() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    large_collection(&k, 3_000).await;
    corpus(&k, "handbook").await;
    k.delete("big", vec!["d7".into(), "d8".into()])
        .await
        .unwrap();
    let before = answers(&k).await;
    let listed = k.collections();
    k.flush().await.unwrap();
    drop(k);

    let k = open(dir.path()).await;
    assert_eq!(k.collections(), listed);
    assert_eq!(
        answers(&k).await,
        before,
        "same query, same results, same scores"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_index_files_are_rebuilt_from_the_stored_documents() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    large_collection(&k, 3_000).await;
    let before = answers(&k).await;
    k.flush().await.unwrap();
    drop(k);

    let collection = dir.path().join("collections/big");
    let vectors = collection.join("vectors.usearch");
    let bytes = std::fs::read(&vectors).unwrap();
    std::fs::write(&vectors, &bytes[..bytes.len() / 3]).unwrap();
    let k = open(dir.path()).await;
    assert_eq!(k.collections()[0].documents, 3_000);
    let after = answers(&k).await;
    // A rebuilt graph may order near-ties differently; exact keyword
    // answers are identical and the vector answers mostly so.
    assert_eq!(after[2], before[2], "keyword ranking unchanged");
    let overlap = after[0].iter().filter(|h| before[0].contains(h)).count();
    assert!(overlap >= 8, "rebuilt vector answers overlap: {overlap}/10");
    k.flush().await.unwrap();
    drop(k);

    std::fs::remove_file(&vectors).unwrap();
    std::fs::remove_dir_all(collection.join("keyword")).unwrap();
    let k = open(dir.path()).await;
    let again = answers(&k).await;
    assert_eq!(again[2], before[2]);
    assert_eq!(again[0].len(), 10);

    // Garbage in place of the keyword index: rebuilt as well.
    k.flush().await.unwrap();
    drop(k);
    for entry in std::fs::read_dir(collection.join("keyword")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::write(&path, b"{ not json").unwrap();
        }
    }
    let k = open(dir.path()).await;
    assert_eq!(answers(&k).await[2], before[2]);
}

#[tokio::test]
async fn one_process_writes_a_knowledge_directory_and_others_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let writer = open(dir.path()).await;
    assert!(!writer.is_read_only());
    corpus(&writer, "handbook").await;
    writer.flush().await.unwrap();
    let reader = open(dir.path()).await;
    assert!(reader.is_read_only());
    let hits = find(
        &reader,
        "handbook",
        &search("vault secrets", 1, SearchMode::Hybrid),
    )
    .await;
    assert_eq!(hits[0].id, "secrets", "a reader searches what was written");
    let err = reader
        .upsert(&caller(), "handbook", vec![doc("x", "text", &[])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "KNOWLEDGE_READ_ONLY");
    assert!(err.to_string().contains("another bsm process"), "{err}");
    drop(reader);
    drop(writer);
    let again = open(dir.path()).await;
    assert!(
        !again.is_read_only(),
        "the lock goes with its process's service"
    );
    again
        .upsert(&caller(), "handbook", vec![doc("x", "text", &[])])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_shipped_bsm_knowledge_is_ingested_and_an_unchanged_reingest_does_no_work() {
    let source = tempfile::tempdir().unwrap();
    let knowledge_dir = source.path().join("knowledge");
    std::fs::create_dir(&knowledge_dir).unwrap();
    for entry in std::fs::read_dir(shipped_agents().join("data/knowledge")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, knowledge_dir.join(path.file_name().unwrap())).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    let mut events = 0;
    let first = k
        .ingest_dir(&knowledge_dir, "bsm", |_| events += 1)
        .await
        .unwrap();
    assert_eq!((first.files, first.indexed, first.unchanged), (2, 2, 0));
    assert!(first.chunks >= 6, "split by headings: {first:?}");
    assert_eq!(events, 3, "listed, then one event per file");
    let hits = find(
        &k,
        "bsm",
        &search(
            "security finding CRITICAL blocks merge",
            1,
            SearchMode::Hybrid,
        ),
    )
    .await;
    assert!(
        hits[0].text.contains("rated CRITICAL blocks the merge"),
        "{hits:?}"
    );
    assert!(
        hits[0]
            .text
            .starts_with("Governance policy (shipped example) > Merging")
    );
    assert_eq!(
        hits[0].source.as_deref(),
        Some(
            format!(
                "governance-policy.md#{}",
                hits[0]
                    .metadata
                    .iter()
                    .find(|(k, _)| k == "position")
                    .unwrap()
                    .1
            )
            .as_str()
        )
    );

    let generation = |k: &Knowledge| {
        let c = k.collections();
        (
            c[0].documents,
            std::fs::metadata(dir.path().join("knowledge.db"))
                .unwrap()
                .len(),
        )
    };
    let state = generation(&k);
    let again = k.ingest_dir(&knowledge_dir, "bsm", |_| {}).await.unwrap();
    assert_eq!(
        (again.indexed, again.unchanged, again.chunks, again.removed),
        (0, 2, 0, 0)
    );
    assert_eq!(generation(&k), state);

    // An edited file replaces its chunks; a removed one takes them away.
    std::fs::write(
        knowledge_dir.join("engineering-handbook.md"),
        "# Handbook\n\nOnly one rule now: ship small changes.\n",
    )
    .unwrap();
    let edited = k.ingest_dir(&knowledge_dir, "bsm", |_| {}).await.unwrap();
    assert_eq!((edited.indexed, edited.unchanged, edited.chunks), (1, 1, 1));
    let hits = find(
        &k,
        "bsm",
        &search("release notes grouped", 10, SearchMode::Keyword),
    )
    .await;
    assert!(hits.is_empty(), "the old chunks are gone: {hits:?}");
    std::fs::write(
        knowledge_dir.join("index.json"),
        r#"{"documents": ["engineering-handbook.md"]}"#,
    )
    .unwrap();
    let removed = k.ingest_dir(&knowledge_dir, "bsm", |_| {}).await.unwrap();
    assert_eq!(removed.removed, 1);
    assert_eq!(k.collections()[0].documents, 1);
}

#[tokio::test]
#[ignore = "reads the original BSM files from BSM_ORIGINAL_FIXTURES; .ci/run runs it with --ignored"]
async fn the_original_bsm_knowledge_is_ingested_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    let summary = k
        .ingest_dir(
            &common::original_fixtures().join("data/knowledge"),
            "bsm",
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((summary.files, summary.indexed), (1, 1), "{summary:?}");
    let hits = find(
        &k,
        "bsm",
        &search("private knowledge document", 1, SearchMode::Hybrid),
    )
    .await;
    assert!(hits[0].text.contains("private knowledge document for BSU"));
    assert_eq!(hits[0].source.as_deref(), Some("example.md#0"));
}

#[tokio::test]
async fn one_bad_entry_is_skipped_with_its_reason_and_the_rest_is_ingested() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir(folder.path().join("notes")).unwrap();
    std::fs::write(
        folder.path().join("notes/good.md"),
        "# Good\n\nUseful words here.",
    )
    .unwrap();
    std::fs::write(folder.path().join("plain.txt"), "Plain text is taken too.").unwrap();
    std::fs::write(folder.path().join("binary.md"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    std::fs::write(folder.path().join("image.png"), [1, 2, 3]).unwrap();
    std::fs::write(folder.path().join(".hidden.md"), "not taken").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", folder.path().join("link.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    let summary = k.ingest_dir(folder.path(), "notes", |_| {}).await.unwrap();
    assert_eq!(summary.indexed, 2, "{summary:?}");
    assert_eq!(summary.skipped.len(), 1, "{summary:?}");
    assert_eq!(summary.skipped[0].path, "binary.md");
    assert!(summary.skipped[0].reason.contains("UTF-8"));

    // A listed name that leaves the folder is refused; the others are taken.
    std::fs::write(
        folder.path().join("index.json"),
        r#"{"documents": ["plain.txt", "../../etc/passwd", "/etc/passwd", "missing.md"]}"#,
    )
    .unwrap();
    let listed = k.ingest_dir(folder.path(), "listed", |_| {}).await.unwrap();
    assert_eq!(listed.indexed, 1, "{listed:?}");
    let reasons: Vec<&str> = listed.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(
        reasons.iter().filter(|r| r.contains("leaves")).count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unreadable")),
        "{reasons:?}"
    );

    let err = k
        .ingest_dir(&folder.path().join("nope"), "x", |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, KnowledgeError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn requests_beyond_the_limits_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let settings = KnowledgeSettings {
        max_batch: 3,
        max_top_k: 5,
        max_query_chars: 20,
        ..KnowledgeSettings::default()
    };
    let k = Knowledge::open(dir.path(), Embedder::builtin(), settings)
        .await
        .unwrap();
    let four = (0..4).map(|i| doc(&format!("{i}"), "text", &[])).collect();
    let err = k.upsert(&caller(), "c", four).await.unwrap_err();
    assert!(err.to_string().contains("at most 3"), "{err}");
    k.upsert(&caller(), "c", vec![doc("a", "text", &[])])
        .await
        .unwrap();
    for (req, needle) in [
        (search("text", 6, SearchMode::Hybrid), "topK"),
        (search("text", 0, SearchMode::Hybrid), "topK"),
        (
            search(&"x".repeat(21), 1, SearchMode::Hybrid),
            "at most 20 characters",
        ),
        (search("  ", 1, SearchMode::Hybrid), "non-empty"),
    ] {
        let err = k.search(&caller(), "c", &req).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = k
        .search(&caller(), "missing", &search("text", 1, SearchMode::Hybrid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "UNKNOWN_COLLECTION");
    for bad in ["../etc", "", "a b", "-x"] {
        let err = k
            .upsert(&caller(), bad, vec![doc("a", "t", &[])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{bad:?}");
    }
    let err = k
        .upsert(&caller(), "c", vec![doc("a", "t", &[]), doc("a", "u", &[])])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[tokio::test]
async fn a_collection_is_only_used_with_the_embedder_it_was_built_with() {
    let llm = LlmServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    corpus(&k, "handbook").await;
    drop(k);

    let mut settings = bsm_platform::llm::LlmSettings::default();
    let url = llm.base_url.clone();
    settings.apply_env(|key| match key {
        "BSM_LLM_BASE_URL" => Some(url.clone()),
        "BSM_LLM_MODEL" => Some("chat-model".into()),
        _ => None,
    });
    // The provider serves the embedding model (models it does not list fall
    // back to its default, as for plugins).
    settings.providers[0].models.push("embed-model".into());
    let client = Arc::new(
        bsm_platform::llm::LlmClient::from_settings(&settings)
            .unwrap()
            .unwrap(),
    );
    let provider = Embedder::provider(client, Some("embed-model".into()), 16);
    let k = Knowledge::open(dir.path(), provider, KnowledgeSettings::default())
        .await
        .unwrap();
    let err = k
        .search(
            &caller(),
            "handbook",
            &search("vault", 3, SearchMode::Vector),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "EMBEDDER_MISMATCH");
    assert!(
        err.to_string().contains("builtin:hashed-ngrams-v1"),
        "{err}"
    );
    assert!(err.to_string().contains("provider:embed-model"), "{err}");
    let err = k
        .upsert(&caller(), "handbook", vec![doc("x", "abc", &[])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "EMBEDDER_MISMATCH");

    // The provider's own collection: embedded through /embeddings in
    // batches, and not embedded again after a restart.
    let docs: Vec<DocumentInput> = (0..40)
        .map(|i| doc(&format!("p{i}"), &"ab".repeat(i + 1), &[]))
        .collect();
    k.upsert(&caller(), "provided", docs).await.unwrap();
    let embed_calls = |llm: &LlmServer| {
        llm.seen()
            .iter()
            .filter(|s| s.path == "/v1/embeddings")
            .count()
    };
    assert_eq!(embed_calls(&llm), 3, "40 texts in batches of 16");
    assert_eq!(llm.seen()[0].body["model"], "embed-model");
    let info = k
        .collections()
        .into_iter()
        .find(|c| c.name == "provided")
        .unwrap();
    assert_eq!(info.dimension, 3);
    k.flush().await.unwrap();
    drop(k);
    let k = Knowledge::open(
        dir.path(),
        Embedder::provider(
            Arc::new(
                bsm_platform::llm::LlmClient::from_settings(&settings)
                    .unwrap()
                    .unwrap(),
            ),
            Some("embed-model".into()),
            16,
        ),
        KnowledgeSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(embed_calls(&llm), 3, "a restart embeds nothing");
    let hits = find(&k, "provided", &search("abab", 1, SearchMode::Keyword)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(embed_calls(&llm), 3, "keyword search embeds nothing");
    find(&k, "provided", &search("abab", 3, SearchMode::Vector)).await;
    find(&k, "provided", &search("abab", 3, SearchMode::Vector)).await;
    assert_eq!(
        embed_calls(&llm),
        4,
        "the query is embedded once, then cached"
    );
}

#[tokio::test]
async fn a_plugin_upserts_gets_searches_and_deletes_through_the_capability() {
    let dir = tempfile::tempdir().unwrap();
    let k = open(dir.path()).await;
    let runtime = loaded_runtime(Capabilities {
        knowledge: Some(Arc::new(k.clone())),
        ..Capabilities::default()
    })
    .await;
    let call = |input: Value| {
        let runtime = runtime.clone();
        async move {
            let run = runtime
                .run_agent("knowledge-user", request(&input.to_string()))
                .await
                .unwrap();
            serde_json::from_str::<Value>(&run.output.text).unwrap()
        }
    };
    let upserted = call(json!({"op": "upsert", "collection": "notes", "documents": [
        {"id": "n1", "text": "Deploys freeze on Fridays", "metadata": {"team": "ops"}},
        {"id": "n2", "text": "Budgets are reviewed monthly", "metadata": {"team": "finance"}},
    ]}))
    .await;
    assert_eq!(upserted, json!({"upserted": 2}));
    let found = call(
        json!({"op": "search", "collection": "notes", "query": "friday deploy freeze", "topK": 1}),
    )
    .await;
    assert_eq!(found["hits"][0]["id"], "n1", "{found}");
    assert_eq!(found["hits"][0]["team"], "ops");
    let filtered = call(json!({"op": "search", "collection": "notes", "query": "deploy", "mode": "keyword", "filter": {"team": "finance"}})).await;
    assert_eq!(filtered["hits"], json!([]), "{filtered}");
    let got = call(json!({"op": "get", "collection": "notes", "id": "n2"})).await;
    assert_eq!(got["document"]["text"], "Budgets are reviewed monthly");
    let deleted = call(json!({"op": "delete", "collection": "notes", "ids": ["n1", "zz"]})).await;
    assert_eq!(deleted, json!({"deleted": 1}));
    let missing = call(json!({"op": "search", "collection": "nowhere", "query": "x"})).await;
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("UnknownCollection"),
        "{missing}"
    );
    let bad =
        call(json!({"op": "search", "collection": "notes", "query": "x", "topK": 1000})).await;
    assert!(
        bad["error"].as_str().unwrap().contains("InvalidRequest"),
        "{bad}"
    );
    // What the plugin wrote is there for everyone else.
    assert_eq!(k.get("notes", "n2").await.unwrap().unwrap().id, "n2");

    // A host without knowledge answers `unavailable`, and the plugin still runs.
    let bare = loaded_runtime(Capabilities::default()).await;
    let run = bare
        .run_agent(
            "knowledge-user",
            request(&json!({"op": "search", "collection": "notes", "query": "x"}).to_string()),
        )
        .await
        .unwrap();
    assert!(
        run.output.text.contains("Unavailable"),
        "{}",
        run.output.text
    );
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knowledge_api_lists_writes_searches_deletes_and_explains_its_errors() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = BsmServer::with_llm(data.path(), &llm.base_url, &[]);
    let c = http();
    let (status, list) = send(c.get(s.url("/api/knowledge"))).await;
    assert_eq!(status, StatusCode::OK);
    let bsm = &list["collections"][0];
    assert_eq!(
        bsm["name"], "bsm",
        "the shipped BSM knowledge is ingested at start: {list}"
    );
    assert!(bsm["documents"].as_u64().unwrap() >= 6);
    assert_eq!(bsm["embedder"], "builtin:hashed-ngrams-v1");
    assert_eq!(bsm["dimension"], 384);

    let body = json!({"documents": [
        {"id": "r1", "text": "Rollbacks revert the release tag", "metadata": {"team": "ops"}, "source": "runbook.md#3"},
        {"id": "r2", "text": "Budget reviews happen monthly", "metadata": {"team": "finance"}},
    ]});
    let url = s.url("/api/knowledge/runbooks/documents");
    let (status, err) = send(c.post(&url).json(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let admin = |r: reqwest::RequestBuilder| r.header("x-admin-token", ADMIN_TOKEN);
    let (status, ok) = send(admin(c.post(&url)).json(&body)).await;
    assert_eq!(
        (status, ok["upserted"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{ok}"
    );

    let search_url = s.url("/api/knowledge/runbooks/search");
    let (status, found) = send(
        c.post(&search_url)
            .json(&json!({"query": "revert a release", "topK": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["mode"], "hybrid");
    let hit = &found["hits"][0];
    assert_eq!(
        (hit["id"].as_str(), hit["source"].as_str()),
        (Some("r1"), Some("runbook.md#3"))
    );
    assert_eq!(hit["metadata"]["team"], "ops");
    assert!(hit["score"].as_f64().unwrap() > 0.0);
    let (_, filtered) = send(
        c.post(&search_url)
            .json(&json!({"query": "release", "mode": "keyword", "filter": {"team": "finance"}})),
    )
    .await;
    assert_eq!(filtered["hits"], json!([]));

    for (body, status, code) in [
        (
            json!({"query": "x", "topK": 1000}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            json!({"query": "x".repeat(5000)}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            json!({"query": "x", "mode": "fuzzy"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (json!({"topK": 3}), StatusCode::UNPROCESSABLE_ENTITY, ""),
    ] {
        let (got, err) = send(c.post(&search_url).json(&body)).await;
        assert_eq!(got, status, "{body} -> {err}");
        assert!(
            err["error"]["code"].as_str().unwrap().contains(code),
            "{err}"
        );
    }
    let (status, err) = send(
        c.post(s.url("/api/knowledge/nowhere/search"))
            .json(&json!({"query": "x"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("UNKNOWN_COLLECTION"))
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("{i}"), "text": "t"}))
        .collect();
    let (status, err) = send(admin(c.post(&url)).json(&json!({"documents": too_many}))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST")),
        "{err}"
    );

    let (status, got) = send(c.get(s.url("/api/knowledge/runbooks/documents/r2"))).await;
    assert_eq!(
        (status, got["text"].as_str()),
        (StatusCode::OK, Some("Budget reviews happen monthly"))
    );
    let doc_url = s.url("/api/knowledge/runbooks/documents/r1");
    let (status, _) = send(c.delete(&doc_url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(admin(c.delete(&doc_url))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = send(admin(c.delete(&doc_url))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("DOCUMENT_NOT_FOUND"))
    );
    let (_, list) = send(c.get(s.url("/api/knowledge"))).await;
    let runbooks = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "runbooks")
        .unwrap();
    assert_eq!(runbooks["documents"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsm_agent_prompt_carries_the_best_hits_for_its_input_not_every_document() {
    let llm = LlmServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("bsm.toml");
    std::fs::write(&config, "[knowledge]\ntop-k = 2\n").unwrap();
    let s = BsmServer::start(
        data.path(),
        &[
            ("BSM_LLM_BASE_URL", llm.base_url.as_str()),
            ("BSM_LLM_MODEL", "test-model"),
            ("BSM_RATE_LIMIT", "0"),
            ("BSM_CONFIG", config.to_str().unwrap()),
        ],
    )
    .unwrap();
    llm.set_reply("ok");
    let (status, run) = send(http().post(s.url("/api/agents/run")).json(&json!({
        "agentId": "security-agent",
        "input": "Is a CRITICAL security finding allowed to merge?",
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    let prompt = llm.seen().last().unwrap().body["messages"].to_string();
    assert!(
        prompt.contains("rated CRITICAL blocks the merge"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("Release notes describe"),
        "only the best hits: {prompt}"
    );
}
