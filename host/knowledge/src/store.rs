//! The source of truth of every collection: documents, their metadata and
//! embeddings, and the content hashes of ingested files, in one SQLite file.
//! The index files are derived from it and can always be rebuilt from it
//! without re-embedding.
//!
//! Every write is one transaction that also bumps the collection's
//! `generation`; an index file records the generation it reflects, so a
//! stale one (a crash between the commit and the file write) is detected at
//! the next start. WAL mode with a separate reader connection: searches
//! never wait for a write transaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::KnowledgeError;

/// String key/values of a document.
pub type Metadata = Vec<(String, String)>;

/// A collection as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRow {
    pub name: String,
    pub embedder: String,
    pub dimension: usize,
    pub generation: u64,
}

/// A document to write.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub text: String,
    pub metadata: Metadata,
    pub source: Option<String>,
    pub embedding: Vec<f32>,
}

/// A stored document (without its embedding).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub key: u64,
    pub id: String,
    pub text: String,
    pub metadata: Metadata,
    pub source: Option<String>,
}

/// What one write transaction changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Keys given to the written documents, in order.
    pub added: Vec<u64>,
    /// Documents that were replaced or deleted: key and old text.
    pub removed: Vec<(u64, String)>,
    pub generation: u64,
}

/// A file recorded by ingestion: what it hashed to and how many chunks it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub path: String,
    pub hash: String,
    pub chunks: usize,
}

/// Changes to a source file's record within a write.
pub enum SourceChange {
    Record(SourceRow),
    Forget(String),
}

/// The knowledge database.
pub struct Store {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    embedder TEXT NOT NULL,
    dimension INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source TEXT,
    embedding BLOB NOT NULL,
    UNIQUE (collection, id)
);
CREATE TABLE IF NOT EXISTS sources (
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    hash TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    PRIMARY KEY (collection, path)
);
";

fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode_metadata(m: &Metadata) -> String {
    let map: serde_json::Map<String, serde_json::Value> = m
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn decode_metadata(text: &str) -> Metadata {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, KnowledgeError> {
        let open = || -> Result<Connection, KnowledgeError> {
            let c = Connection::open(path)?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            Ok(c)
        };
        let writer = open()?;
        writer.execute_batch(SCHEMA)?;
        let reader = open()?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    pub fn collections(&self) -> Result<Vec<CollectionRow>, KnowledgeError> {
        let c = lock(&self.reader);
        let mut stmt = c.prepare_cached(
            "SELECT name, embedder, dimension, generation FROM collections ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CollectionRow {
                name: r.get(0)?,
                embedder: r.get(1)?,
                dimension: r.get::<_, i64>(2)? as usize,
                generation: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a new collection (generation 0).
    pub fn create_collection(&self, row: &CollectionRow) -> Result<(), KnowledgeError> {
        lock(&self.writer).execute(
            "INSERT INTO collections (name, embedder, dimension, generation) VALUES (?1, ?2, ?3, 0)",
            params![row.name, row.embedder, row.dimension as i64],
        )?;
        Ok(())
    }

    /// Writes `upserts` (replacing documents with the same id), deletes
    /// `deletes`, and records source changes: one transaction.
    pub fn apply(
        &self,
        collection: &str,
        upserts: &[NewDocument],
        deletes: &[String],
        sources: &[SourceChange],
    ) -> Result<Applied, KnowledgeError> {
        let mut c = lock(&self.writer);
        let tx = c.transaction()?;
        let mut applied = Applied::default();
        {
            let mut take = tx.prepare_cached(
                "DELETE FROM documents WHERE collection = ?1 AND id = ?2 RETURNING key, text",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO documents (collection, id, text, metadata, source, embedding)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for id in upserts.iter().map(|d| &d.id).chain(deletes) {
                let old: Option<(i64, String)> = take
                    .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((key, text)) = old {
                    applied.removed.push((key as u64, text));
                }
            }
            for d in upserts {
                insert.execute(params![
                    collection,
                    d.id,
                    d.text,
                    encode_metadata(&d.metadata),
                    d.source,
                    encode_vector(&d.embedding),
                ])?;
                applied.added.push(tx.last_insert_rowid() as u64);
            }
            for change in sources {
                match change {
                    SourceChange::Record(s) => tx.execute(
                        "INSERT INTO sources (collection, path, hash, chunks) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (collection, path) DO UPDATE SET hash = ?3, chunks = ?4",
                        params![collection, s.path, s.hash, s.chunks as i64],
                    )?,
                    SourceChange::Forget(path) => tx.execute(
                        "DELETE FROM sources WHERE collection = ?1 AND path = ?2",
                        params![collection, path],
                    )?,
                };
            }
        }
        applied.generation = tx.query_row(
            "UPDATE collections SET generation = generation + 1 WHERE name = ?1 RETURNING generation",
            params![collection],
            |r| r.get::<_, i64>(0),
        )? as u64;
        tx.commit()?;
        Ok(applied)
    }

    /// The documents with these keys (missing keys are left out), in one
    /// statement.
    pub fn by_keys(&self, keys: &[u64]) -> Result<HashMap<u64, StoredDocument>, KnowledgeError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let c = lock(&self.reader);
        let placeholders = vec!["?"; keys.len()].join(",");
        let mut stmt = c.prepare_cached(&format!(
            "SELECT key, id, text, metadata, source FROM documents WHERE key IN ({placeholders})"
        ))?;
        let params: Vec<i64> = keys.iter().map(|k| *k as i64).collect();
        let rows = stmt.query_map(rusqlite::params_from_iter(params), row_to_document)?;
        let mut out = HashMap::with_capacity(keys.len());
        for doc in rows {
            let doc = doc?;
            out.insert(doc.key, doc);
        }
        Ok(out)
    }

    /// One document by id.
    pub fn get(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<StoredDocument>, KnowledgeError> {
        let c = lock(&self.reader);
        let mut stmt = c.prepare_cached(
            "SELECT key, id, text, metadata, source FROM documents WHERE collection = ?1 AND id = ?2",
        )?;
        Ok(stmt
            .query_row(params![collection, id], row_to_document)
            .optional()?)
    }

    /// Calls `each` for every document of a collection with its embedding
    /// (restoring the in-memory state and rebuilding indexes).
    pub fn scan(
        &self,
        collection: &str,
        mut each: impl FnMut(StoredDocument, Vec<f32>) -> Result<(), KnowledgeError>,
    ) -> Result<(), KnowledgeError> {
        let c = lock(&self.reader);
        let mut stmt = c.prepare(
            "SELECT key, id, text, metadata, source, embedding FROM documents
             WHERE collection = ?1 ORDER BY key",
        )?;
        let mut rows = stmt.query(params![collection])?;
        while let Some(row) = rows.next()? {
            let doc = row_to_document(row)?;
            let embedding = decode_vector(&row.get::<_, Vec<u8>>(5)?);
            each(doc, embedding)?;
        }
        Ok(())
    }

    /// The recorded files of a collection.
    pub fn sources(&self, collection: &str) -> Result<HashMap<String, SourceRow>, KnowledgeError> {
        let c = lock(&self.reader);
        let mut stmt =
            c.prepare_cached("SELECT path, hash, chunks FROM sources WHERE collection = ?1")?;
        let rows = stmt.query_map(params![collection], |r| {
            Ok(SourceRow {
                path: r.get(0)?,
                hash: r.get(1)?,
                chunks: r.get::<_, i64>(2)? as usize,
            })
        })?;
        rows.map(|r| r.map(|s| (s.path.clone(), s)).map_err(Into::into))
            .collect()
    }
}

fn row_to_document(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDocument> {
    Ok(StoredDocument {
        key: r.get::<_, i64>(0)? as u64,
        id: r.get(1)?,
        text: r.get(2)?,
        metadata: decode_metadata(&r.get::<_, String>(3)?),
        source: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> NewDocument {
        NewDocument {
            id: id.into(),
            text: text.into(),
            metadata: vec![("kind".into(), "note".into())],
            source: Some(format!("{id}.md#0")),
            embedding: vec![0.5, -0.25],
        }
    }

    #[test]
    fn writes_replace_by_id_and_bump_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).unwrap();
        store
            .create_collection(&CollectionRow {
                name: "c".into(),
                embedder: "e".into(),
                dimension: 2,
                generation: 0,
            })
            .unwrap();
        let first = store
            .apply("c", &[doc("a", "one"), doc("b", "two")], &[], &[])
            .unwrap();
        assert_eq!(first.generation, 1);
        assert!(first.removed.is_empty());
        let second = store
            .apply("c", &[doc("a", "uno")], &["b".into(), "zz".into()], &[])
            .unwrap();
        assert_eq!(second.generation, 2);
        let removed: Vec<&str> = second.removed.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(removed, ["one", "two"]);
        let a = store.get("c", "a").unwrap().unwrap();
        assert_eq!(a.text, "uno");
        assert_eq!(a.metadata, vec![("kind".to_string(), "note".to_string())]);
        assert!(store.get("c", "b").unwrap().is_none());
        let mut seen = Vec::new();
        store
            .scan("c", |d, v| {
                seen.push((d.id, v));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![("a".to_string(), vec![0.5, -0.25])]);
        assert_eq!(store.collections().unwrap()[0].generation, 2);
    }
}
