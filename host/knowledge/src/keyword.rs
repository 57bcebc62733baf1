//! BM25 keyword ranking of a collection through tantivy (English stemming,
//! stop words kept out by BM25's IDF rather than removed).
//!
//! The index lives in its own directory; tantivy commits are atomic (a crash
//! leaves the previous commit). Each commit carries the collection
//! generation it reflects as its payload, so a stale index is detected at
//! start and rebuilt from the database. Searchers see a snapshot: a commit
//! in progress never blocks or changes a running search.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::KnowledgeError;
use crate::store::Metadata;

/// The smallest indexing arena tantivy accepts (15 MB); a writer exists only
/// while a write batch is applied.
const WRITER_MEMORY: usize = 15_000_000;

/// Separates key from value in the indexed metadata terms.
const META_SEPARATOR: char = '\u{1f}';

/// A collection's keyword index.
pub struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    key: Field,
    text: Field,
    meta: Field,
    parser: QueryParser,
}

/// One document as the keyword index sees it.
pub struct KeywordDoc<'a> {
    pub key: u64,
    pub text: &'a str,
    pub metadata: &'a Metadata,
}

fn schema() -> (Schema, Field, Field, Field) {
    let mut builder = Schema::builder();
    let key = builder.add_u64_field("key", INDEXED | FAST);
    let text = builder.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let meta = builder.add_text_field("meta", STRING);
    (builder.build(), key, text, meta)
}

fn meta_term(field: Field, key: &str, value: &str) -> Term {
    Term::from_field_text(field, &format!("{key}{META_SEPARATOR}{value}"))
}

impl KeywordIndex {
    /// Opens the index in `dir`, creating an empty one if there is none.
    pub fn open(dir: &Path) -> Result<Self, KnowledgeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| KnowledgeError::Storage(format!("creating {}: {e}", dir.display())))?;
        let directory = tantivy::directory::MmapDirectory::open(dir)
            .map_err(|e| KnowledgeError::Storage(format!("opening {}: {e}", dir.display())))?;
        Self::with_index(Index::open_or_create(directory, schema().0)?)
    }

    /// An empty index in memory (a reader process rebuilding what it may
    /// not write).
    pub fn in_memory() -> Result<Self, KnowledgeError> {
        Self::with_index(Index::create_in_ram(schema().0))
    }

    fn with_index(index: Index) -> Result<Self, KnowledgeError> {
        let (_, key, text, meta) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let parser = QueryParser::for_index(&index, vec![text]);
        Ok(Self {
            index,
            reader,
            key,
            text,
            meta,
            parser,
        })
    }

    /// The collection generation of the last commit (0 for a new index).
    pub fn generation(&self) -> Result<u64, KnowledgeError> {
        Ok(self
            .index
            .load_metas()?
            .payload
            .and_then(|p| p.parse().ok())
            .unwrap_or(0))
    }

    /// Documents in the committed index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes `remove`, adds `add` and commits as `generation`; optionally
    /// clears everything first (a rebuild). Visible to searches once done.
    pub fn apply(
        &self,
        clear: bool,
        remove: &[u64],
        add: &[KeywordDoc<'_>],
        generation: u64,
    ) -> Result<(), KnowledgeError> {
        let mut writer: IndexWriter<TantivyDocument> =
            self.index.writer_with_num_threads(1, WRITER_MEMORY)?;
        if clear {
            writer.delete_all_documents()?;
        }
        for key in remove {
            writer.delete_term(Term::from_field_u64(self.key, *key));
        }
        for doc in add {
            let mut d = TantivyDocument::default();
            d.add_u64(self.key, doc.key);
            d.add_text(self.text, doc.text);
            for (k, v) in doc.metadata {
                d.add_text(self.meta, format!("{k}{META_SEPARATOR}{v}"));
            }
            writer.add_document(d)?;
        }
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&generation.to_string());
        commit.commit()?;
        writer.wait_merging_threads()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Up to `k` keys ranked by BM25 for `query`, best first, among the
    /// documents whose metadata has every `filter` pair. Query syntax errors
    /// are forgiven (words are searched as words).
    pub fn search(
        &self,
        query: &str,
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(u64, f32)>, KnowledgeError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let (parsed, _errors) = self.parser.parse_query_lenient(query);
        let query: Box<dyn Query> = if filter.is_empty() {
            parsed
        } else {
            let mut clauses = vec![(Occur::Must, parsed)];
            for (key, value) in filter {
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        meta_term(self.meta, key, value),
                        IndexRecordOption::Basic,
                    )) as Box<dyn Query>,
                ));
            }
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.reader.searcher();
        // A few more than asked, so that ties at the cut are broken by key
        // (not by where a document happens to sit in the segments).
        let top = searcher.search(&query, &TopDocs::with_limit(k + 16).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let keys = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64("key")?;
            if let Some(key) = keys.first(address.doc_id) {
                out.push((key, score));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_bm25_with_stemming_filters_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = KeywordIndex::open(dir.path()).unwrap();
        assert_eq!(index.generation().unwrap(), 0);
        let ops = vec![("team".to_string(), "ops".to_string())];
        let none = Vec::new();
        let docs = [
            KeywordDoc {
                key: 1,
                text: "Deployments are frozen on Fridays",
                metadata: &ops,
            },
            KeywordDoc {
                key: 2,
                text: "The budget review happens quarterly",
                metadata: &none,
            },
            KeywordDoc {
                key: 3,
                text: "Deploy with the pipeline; deploying by hand is forbidden",
                metadata: &none,
            },
        ];
        index.apply(false, &[], &docs, 7).unwrap();
        let hits = index.search("deploy", 10, &Vec::new()).unwrap();
        let keys: Vec<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(keys, [3, 1], "stemmed matches, the denser one first");
        let hits = index.search("deploy", 10, &ops).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
        assert!(index.search("\"unbalanced AND (", 5, &none).is_ok());

        index.apply(false, &[3], &[], 8).unwrap();
        drop(index);
        let reopened = KeywordIndex::open(dir.path()).unwrap();
        assert_eq!(reopened.generation().unwrap(), 8);
        assert_eq!(reopened.len(), 2);
        let keys: Vec<u64> = reopened
            .search("deploy", 10, &none)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(keys, [1]);
    }
}
