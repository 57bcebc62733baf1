//! Markdown reports, written without blocking the async runtime's threads and
//! atomically (temporary file, rename): a crash never leaves a half-written
//! report. Names are sanitised; an index records id, plugin, job, name, size
//! and time. Durability: with a JSON-lines index (the CLI) each report is
//! fsync'd (file, then directory) before its write returns; with the
//! database (the server) its body is committed with its index row and the
//! files are synced in batches (see [`crate::report_journal`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bsm_runtime::bindings::reports::{Error as WitReportError, ReportRef};
use bsm_runtime::capabilities::reports::ReportSink;
use serde::{Deserialize, Serialize};

use crate::batch_writer::Committed;
use crate::dir_sync::DirSyncs;
use crate::report_journal::{ReportJournal, Settler};

/// Longest report name accepted.
pub const MAX_NAME_BYTES: usize = 128;
const INDEX_FILE: &str = "index.jsonl";
/// Prefix of temporary files: removed at open (crash leftovers).
pub const TMP_PREFIX: &str = bsm_runtime::atomic_file::TMP_PREFIX;

/// One entry of the report index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRecord {
    pub id: String,
    pub plugin: String,
    /// The job (correlation id) the report belongs to.
    pub job: String,
    pub name: String,
    /// Path relative to the report directory.
    pub file: String,
    pub bytes: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// Why a report was not written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("invalid report name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0}")]
    Storage(String),
}

/// Where the report index lives: a JSON-lines file beside the reports
/// (the CLI), or the embedded database (the server).
#[async_trait::async_trait]
pub trait ReportIndex: Send + Sync {
    async fn append(&self, record: &ReportRecord) -> Result<(), String>;
    /// Every record, oldest first.
    async fn all(&self) -> Vec<ReportRecord>;

    /// One record by id (a scan unless the index can look it up).
    async fn find(&self, id: &str) -> Option<ReportRecord> {
        self.all().await.into_iter().find(|r| r.id == id)
    }
}

/// `index.jsonl` in the report directory. Appends are serialised; a torn
/// last line (a crash during an append) is skipped when read.
pub struct JsonlIndex {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

#[async_trait::async_trait]
impl ReportIndex for JsonlIndex {
    async fn append(&self, record: &ReportRecord) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).expect("a record serialises");
        line.push(b'\n');
        let path = self.path.clone();
        let _guard = self.lock.lock().await;
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| storage_error(&path, "open the report index", &e).to_string())?;
            f.write_all(&line)
                .map_err(|e| storage_error(&path, "append to the report index", &e).to_string())?;
            f.sync_data()
                .map_err(|e| storage_error(&path, "sync the report index", &e).to_string())
        })
        .await
        .map_err(|e| format!("report index task failed: {e}"))?
    }

    async fn all(&self) -> Vec<ReportRecord> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A report whose file is written and whose index row is queued.
#[must_use = "a queued report is indexed (and its file synced) only once `indexed` is awaited"]
pub struct QueuedReport {
    pub record: ReportRecord,
    /// The index row's write; `None` when it is already appended.
    committed: Option<Committed>,
    /// Who syncs the file once the row committed.
    settler: Option<(Arc<Settler>, PathBuf)>,
}

impl QueuedReport {
    /// Waits for the index row (at once when a later write of the caller
    /// has committed) and hands the file to the settler.
    pub async fn indexed(self) -> Result<ReportRecord, ReportError> {
        if let Some(committed) = self.committed {
            committed.await.map_err(ReportError::Storage)?;
        }
        if let Some((settler, path)) = self.settler {
            settler.written(self.record.id.clone(), path);
        }
        Ok(self.record)
    }
}

/// The report directory and its index.
pub struct ReportStore {
    dir: PathBuf,
    index: Arc<dyn ReportIndex>,
    durability: Durability,
}

/// How a written report becomes durable before its write returns.
enum Durability {
    /// Its file and directory are fsync'd (reports written side by side
    /// share their directory's fsync).
    SyncEach(Arc<DirSyncs>),
    /// Its body is committed with its index row; the file is synced by the
    /// settler's next pass.
    Journaled(Arc<Settler>),
}

impl ReportStore {
    /// Opens (creating if needed) a report directory with its `index.jsonl`,
    /// and removes temporary files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Arc<Self>, ReportError> {
        let dir = prepare_dir(dir.into())?;
        let index = Arc::new(JsonlIndex {
            path: dir.join(INDEX_FILE),
            lock: tokio::sync::Mutex::new(()),
        });
        Ok(Arc::new(Self {
            dir,
            index,
            durability: Durability::SyncEach(Arc::default()),
        }))
    }

    /// Opens a report directory indexed by a journal (the database): files
    /// of reports a crash left unsynced are restored from it first.
    pub async fn open_journaled(
        dir: impl Into<PathBuf>,
        journal: Arc<dyn ReportJournal>,
    ) -> Result<Arc<Self>, ReportError> {
        Self::open_journaled_every(dir, journal, crate::report_journal::SETTLE_EVERY).await
    }

    /// [`ReportStore::open_journaled`] with the files synced every `every`.
    pub(crate) async fn open_journaled_every(
        dir: impl Into<PathBuf>,
        journal: Arc<dyn ReportJournal>,
        every: std::time::Duration,
    ) -> Result<Arc<Self>, ReportError> {
        let dir = prepare_dir(dir.into())?;
        let (settler, restored) = Settler::recover(&dir, journal.clone(), every)
            .await
            .map_err(ReportError::Storage)?;
        if restored > 0 {
            tracing::warn!(
                restored,
                "report files lost in a crash were restored from the database"
            );
        }
        Ok(Arc::new(Self {
            dir,
            index: journal,
            durability: Durability::Journaled(settler),
        }))
    }

    /// Syncs the reports written so far whose files are not yet synced
    /// (at shutdown; a no-op for a store that syncs each report).
    pub async fn settle(&self) -> Result<usize, ReportError> {
        match &self.durability {
            Durability::SyncEach(_) => Ok(0),
            Durability::Journaled(settler) => {
                settler.settle_now().await.map_err(ReportError::Storage)
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a report atomically and records it in the index.
    pub async fn write(
        &self,
        plugin: &str,
        job: &str,
        name: &str,
        markdown: &str,
    ) -> Result<ReportRecord, ReportError> {
        self.write_queued(plugin, job, name, markdown)
            .await?
            .indexed()
            .await
    }

    /// Writes a report's file and queues its index row (with the server's
    /// database; the CLI's index is appended at once): a job that commits
    /// its own end right after waits once, not twice. The report is only
    /// known to readers, and its file handed to the settler, once
    /// [`QueuedReport::indexed`] answered.
    pub async fn write_queued(
        &self,
        plugin: &str,
        job: &str,
        name: &str,
        markdown: &str,
    ) -> Result<QueuedReport, ReportError> {
        let name = sanitize_name(name)?;
        let id = crate::store::new_row_id().simple().to_string();
        let file = format!("{}/{id}-{name}", sanitize_segment(plugin));
        let target = self.dir.join(&file);
        let bytes = markdown.as_bytes().to_vec();
        let size = bytes.len() as u64;
        let dir_syncs = match &self.durability {
            Durability::SyncEach(dir_syncs) => Some(dir_syncs.clone()),
            Durability::Journaled(_) => None,
        };
        let path = target.clone();
        tokio::task::spawn_blocking(move || write_file(&path, &bytes, dir_syncs.as_deref()))
            .await
            .map_err(|e| ReportError::Storage(format!("report writer task failed: {e}")))??;
        let record = ReportRecord {
            id,
            plugin: plugin.to_string(),
            job: job.to_string(),
            name,
            file,
            bytes: size,
            created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        match &self.durability {
            Durability::SyncEach(_) => {
                self.index
                    .append(&record)
                    .await
                    .map_err(ReportError::Storage)?;
                Ok(QueuedReport {
                    record,
                    committed: None,
                    settler: None,
                })
            }
            Durability::Journaled(settler) => Ok(QueuedReport {
                committed: Some(settler.journal().queue_journaled(&record, markdown)),
                record,
                settler: Some((settler.clone(), target)),
            }),
        }
    }

    /// Every indexed report whose file exists, oldest first.
    pub async fn list(&self) -> Vec<ReportRecord> {
        let mut records = Vec::new();
        for r in self.index.all().await {
            if tokio::fs::try_exists(self.dir.join(&r.file))
                .await
                .unwrap_or(false)
            {
                records.push(r);
            }
        }
        records
    }

    /// One page of the reports whose files exist, newest first.
    pub async fn page(
        &self,
        request: &crate::paging::PageRequest,
    ) -> crate::paging::Page<ReportRecord> {
        let records = self.index.all().await;
        let (dir, request) = (self.dir.clone(), request.clone());
        tokio::task::spawn_blocking(move || {
            crate::paging::page(
                records,
                |r| (r.created_at.as_str(), r.id.as_str()),
                &request,
                |r| dir.join(&r.file).exists(),
            )
        })
        .await
        .unwrap_or(crate::paging::Page {
            items: Vec::new(),
            next: None,
        })
    }

    /// A report's record and content.
    pub async fn get(&self, id: &str) -> Option<(ReportRecord, String)> {
        let record = self.index.find(id).await?;
        let text = tokio::fs::read_to_string(self.dir.join(&record.file))
            .await
            .ok()?;
        Some((record, text))
    }
}

/// Accepts a plain file name: no directories, no `..`, no absolute paths, no
/// control characters; `.md` is added when missing.
pub fn sanitize_name(name: &str) -> Result<String, ReportError> {
    let invalid = |reason: &str| ReportError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if trimmed.starts_with('/') || trimmed.starts_with('\\') || trimmed.get(1..2) == Some(":") {
        return Err(invalid("absolute paths are not allowed"));
    }
    if trimmed.contains('/') || trimmed.contains('\\') {
        return Err(invalid("the name may not contain path separators"));
    }
    if trimmed == "." || trimmed == ".." || trimmed.starts_with('.') {
        return Err(invalid("the name may not start with a dot"));
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(invalid("control characters are not allowed"));
    }
    if trimmed.len() > MAX_NAME_BYTES {
        return Err(invalid(&format!("longer than {MAX_NAME_BYTES} bytes")));
    }
    let mut clean: String = trimmed
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !clean.ends_with(".md") {
        clean.push_str(".md");
    }
    Ok(clean)
}

/// A directory name derived from a plugin id (ids are already restricted;
/// this is a second fence).
fn sanitize_segment(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

fn storage_error(path: &Path, action: &str, e: &std::io::Error) -> ReportError {
    let why = match e.raw_os_error() {
        Some(28) => "the disk is full".to_string(),
        Some(30) => "the file system is read-only".to_string(),
        _ => e.to_string(),
    };
    ReportError::Storage(format!("cannot {action} at {}: {why}", path.display()))
}

/// A new file under a fresh name, whole or not at all (see
/// [`bsm_runtime::atomic_file::create_new`]). With `dir_syncs`, durable
/// before it returns: the file is fsync'd before it is named and the
/// directory after (shared with the reports named meanwhile); without,
/// durability is the caller's (the journal).
pub(crate) fn write_file(
    path: &Path,
    bytes: &[u8],
    dir_syncs: Option<&DirSyncs>,
) -> Result<(), ReportError> {
    use bsm_runtime::atomic_file::{Durability, create_new};
    let dir = path.parent().expect("report paths have a parent");
    std::fs::create_dir_all(dir)
        .map_err(|e| storage_error(dir, "create the report directory", &e))?;
    let durability = match dir_syncs {
        Some(_) => Durability::SyncFile,
        None => Durability::Atomic,
    };
    create_new(path, bytes, durability).map_err(|e| storage_error(path, "write the report", &e))?;
    if let Some(dir_syncs) = dir_syncs {
        dir_syncs.of(dir).sync(dir);
    }
    Ok(())
}

/// Creates the report directory if needed and clears a crash's leftovers.
fn prepare_dir(dir: PathBuf) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(&dir)
        .map_err(|e| storage_error(&dir, "create the report directory", &e))?;
    remove_leftovers(&dir);
    Ok(dir)
}

/// Removes `.tmp-*` files (reports whose write never finished) below `dir`.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_leftovers(&path);
        } else if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The `reports` capability writes through the store: a bad name is the
/// plugin's error, anything else a storage failure.
#[async_trait::async_trait]
impl ReportSink for ReportStore {
    async fn write(
        &self,
        plugin_id: &str,
        job_id: &str,
        name: &str,
        markdown: &str,
    ) -> Result<ReportRef, WitReportError> {
        let record = ReportStore::write(self, plugin_id, job_id, name, markdown)
            .await
            .map_err(|e| match e {
                ReportError::InvalidName { .. } => WitReportError::InvalidName(e.to_string()),
                ReportError::Storage(m) => WitReportError::Storage(m),
            })?;
        Ok(ReportRef {
            id: record.id,
            name: record.name,
            bytes: record.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_traversal_refused() {
        assert_eq!(sanitize_name("review").unwrap(), "review.md");
        assert_eq!(
            sanitize_name("PR 42: review.md").unwrap(),
            "PR-42--review.md"
        );
        assert_eq!(sanitize_name("تقرير").unwrap(), "تقرير.md");
        for bad in [
            "",
            "  ",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "C:\\x",
            "..",
            ".hidden",
            "a\nb",
            &"x".repeat(200),
        ] {
            assert!(
                matches!(sanitize_name(bad), Err(ReportError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
