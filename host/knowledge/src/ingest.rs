//! Ingestion of a folder into a collection: the original BSM layout
//! (`index.json` listing markdown files) or any folder of markdown and text
//! files, walked recursively.
//!
//! Each file is hashed; a file whose hash is recorded is skipped without
//! reading further or embedding, a changed file replaces its old chunks (one
//! transaction per file), and a file gone from the folder takes its chunks
//! with it. One bad entry (unreadable, not UTF-8, too large, a listed name
//! escaping the folder) is skipped with its reason; it never fails the rest.
//! Symbolic links and hidden entries are not followed.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use bsm_runtime::capabilities::Caller;

use crate::chunk::chunk_markdown;
use crate::error::KnowledgeError;
use crate::service::{Knowledge, check_collection_name};
use crate::store::{NewDocument, SourceChange, SourceRow};

/// Extensions ingested from a plain folder.
const EXTENSIONS: &[&str] = &["md", "markdown", "mdx", "txt"];
/// Deepest folder nesting walked.
const MAX_DEPTH: usize = 16;
/// Most files taken from one folder.
const MAX_FILES: usize = 100_000;

/// Progress of an ingestion, for a progress bar or a log.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// The files to look at are known.
    Listed { files: usize },
    /// One file is done.
    File { path: String, outcome: FileOutcome },
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    Unchanged,
    Indexed { chunks: usize },
    Skipped { reason: String },
}

/// What an ingestion did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestSummary {
    pub collection: String,
    /// Files looked at.
    pub files: usize,
    /// Files new or changed since the last ingestion, now indexed.
    pub indexed: usize,
    /// Files with the recorded hash, left alone.
    pub unchanged: usize,
    /// Files gone since the last ingestion, their chunks removed.
    pub removed: usize,
    /// Chunks written.
    pub chunks: usize,
    /// Entries skipped, with the reason.
    pub skipped: Vec<SkippedFile>,
}

/// An entry ingestion could not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

#[derive(Deserialize)]
struct OriginalIndex {
    documents: Vec<String>,
}

/// A file to ingest: its path relative to the folder, and where it is.
type Listed = (String, PathBuf);

/// The files of `dir` to ingest, and the entries refused on the way.
fn list(dir: &Path) -> Result<(Vec<Listed>, Vec<SkippedFile>), KnowledgeError> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| KnowledgeError::Invalid(format!("cannot read {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(KnowledgeError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let index = dir.join("index.json");
    let mut skipped = Vec::new();
    if index.is_file() {
        let bytes = std::fs::read(&index).map_err(|e| {
            KnowledgeError::Invalid(format!("cannot read {}: {e}", index.display()))
        })?;
        let listed: OriginalIndex = serde_json::from_slice(&bytes).map_err(|e| {
            KnowledgeError::Invalid(format!(
                "{} is not a knowledge index ({{\"documents\": [...]}}): {e}",
                index.display()
            ))
        })?;
        let mut files = Vec::new();
        for name in listed.documents {
            let inside = !name.is_empty()
                && Path::new(&name)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if inside {
                files.push((name.clone(), dir.join(&name)));
            } else {
                skipped.push(SkippedFile {
                    path: name,
                    reason: "listed name leaves the knowledge folder".into(),
                });
            }
        }
        return Ok((files, skipped));
    }
    let mut files = Vec::new();
    walk(dir, dir, 0, &mut files, &mut skipped);
    files.sort();
    Ok((files, skipped))
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    files: &mut Vec<Listed>,
    skipped: &mut Vec<SkippedFile>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            skipped.push(SkippedFile {
                path: dir.display().to_string(),
                reason: format!("unreadable folder: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || files.len() >= MAX_FILES {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if kind.is_dir() && depth < MAX_DEPTH {
            walk(root, &path, depth + 1, files, skipped);
        } else if kind.is_file() {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if EXTENSIONS.contains(&ext.as_str()) {
                files.push((relative, path));
            }
        }
    }
}

fn chunk_id(path: &str, position: usize) -> String {
    format!("{path}#{position}")
}

impl Knowledge {
    /// Ingests the folder `dir` into `collection`, calling `progress` as it
    /// goes; see the module documentation.
    pub async fn ingest_dir(
        &self,
        dir: &Path,
        collection: &str,
        mut progress: impl FnMut(IngestEvent),
    ) -> Result<IngestSummary, KnowledgeError> {
        check_collection_name(collection)?;
        let (files, skipped) = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || list(&dir))
                .await
                .map_err(KnowledgeError::storage)??
        };
        let mut summary = IngestSummary {
            collection: collection.to_string(),
            files: files.len(),
            skipped,
            ..Default::default()
        };
        progress(IngestEvent::Listed { files: files.len() });
        let recorded = match self.collection(collection) {
            Ok(_) => self.inner().store.sources(collection)?,
            Err(KnowledgeError::UnknownCollection(_)) => Default::default(),
            Err(e) => return Err(e),
        };
        let caller = Caller {
            plugin_id: "knowledge-ingest".into(),
            correlation_id: format!("ingest:{collection}").into(),
        };
        let max_bytes = self.settings().max_file_bytes;
        for (relative, path) in &files {
            let outcome = match read_file(path, max_bytes).await {
                Err(reason) => FileOutcome::Skipped { reason },
                Ok(text) => {
                    let hash = hex::encode(Sha256::digest(text.as_bytes()));
                    let before = recorded.get(relative);
                    if before.is_some_and(|r| r.hash == hash) {
                        FileOutcome::Unchanged
                    } else {
                        let chunks = self
                            .index_file(&caller, collection, relative, &text, hash, before)
                            .await?;
                        FileOutcome::Indexed { chunks }
                    }
                }
            };
            match &outcome {
                FileOutcome::Unchanged => summary.unchanged += 1,
                FileOutcome::Indexed { chunks } => {
                    summary.indexed += 1;
                    summary.chunks += chunks;
                }
                FileOutcome::Skipped { reason } => summary.skipped.push(SkippedFile {
                    path: relative.clone(),
                    reason: reason.clone(),
                }),
            }
            progress(IngestEvent::File {
                path: relative.clone(),
                outcome,
            });
        }
        // Files gone from the folder take their chunks with them; files that
        // are there but could not be read keep theirs.
        let present: std::collections::HashSet<&str> =
            files.iter().map(|(r, _)| r.as_str()).collect();
        for (path, row) in &recorded {
            if !present.contains(path.as_str()) {
                let ids = (0..row.chunks).map(|i| chunk_id(path, i)).collect();
                self.write(
                    collection,
                    Vec::new(),
                    ids,
                    vec![SourceChange::Forget(path.clone())],
                )
                .await?;
                summary.removed += 1;
            }
        }
        Ok(summary)
    }

    async fn index_file(
        &self,
        caller: &Caller,
        collection: &str,
        relative: &str,
        text: &str,
        hash: String,
        before: Option<&SourceRow>,
    ) -> Result<usize, KnowledgeError> {
        let chunks = chunk_markdown(text, self.settings().chunking);
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let vectors = self.embedder().embed_documents(caller, &texts).await?;
        let written: Vec<NewDocument> = chunks
            .iter()
            .zip(vectors)
            .map(|(c, embedding)| {
                let mut metadata = vec![
                    ("path".to_string(), relative.to_string()),
                    ("position".to_string(), c.position.to_string()),
                ];
                if !c.heading.is_empty() {
                    metadata.push(("heading".to_string(), c.heading.clone()));
                }
                NewDocument {
                    id: chunk_id(relative, c.position),
                    text: c.text.clone(),
                    metadata,
                    source: Some(chunk_id(relative, c.position)),
                    embedding,
                }
            })
            .collect();
        let old_chunks = before.map_or(0, |b| b.chunks);
        let deletes = (chunks.len()..old_chunks)
            .map(|i| chunk_id(relative, i))
            .collect();
        let count = chunks.len();
        self.write(
            collection,
            written,
            deletes,
            vec![SourceChange::Record(SourceRow {
                path: relative.to_string(),
                hash,
                chunks: count,
            })],
        )
        .await?;
        Ok(count)
    }
}

/// The text of a file, or why it is skipped.
async fn read_file(path: &Path, max_bytes: u64) -> Result<String, String> {
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(|e| format!("unreadable: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "{} bytes; files over {max_bytes} bytes are not ingested",
            meta.len()
        ));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("unreadable: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}
