//! Reports made durable by the database instead of an fsync apiece.
//!
//! Each report used to be fsync'd (file, then directory) before its write
//! returned: on ext4 one journal commit and several thread switches per
//! report, on the path of every job. Under the server's database the
//! report's body is instead committed with its index row (the group
//! commit the job's rows share), its file is renamed into place unsynced,
//! and a background pass syncs the files written since the last pass in
//! one go (`syncfs` on Linux) and then drops their bodies from the
//! journal. At the next start, every body still in the journal is checked
//! against its file and the file rewritten when it differs: a crash (of
//! the process or the machine) never leaves an indexed report missing,
//! empty or half-written.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use crate::batch_writer::Committed;
use crate::reports::{ReportIndex, ReportRecord};

/// How long a written report's file may wait for its sync (its body is in
/// the database meanwhile).
pub const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// A report index that keeps each report's body until its file is known
/// to be on disk (the server's database).
#[async_trait::async_trait]
pub trait ReportJournal: ReportIndex {
    /// Queues the report and its body as one write, answering once it
    /// committed: a caller whose own next write commits after it (writes
    /// commit in order) waits once for both.
    fn queue_journaled(&self, record: &ReportRecord, body: &str) -> Committed;
    /// Records the report and its body, durably, in one write.
    async fn append_journaled(&self, record: &ReportRecord, body: &str) -> Result<(), String> {
        self.queue_journaled(record, body).await
    }
    /// The reports whose bodies are still kept, with their bodies.
    async fn unsettled(&self) -> Result<Vec<(ReportRecord, String)>, String>;
    /// Forgets the bodies of reports whose files are synced.
    async fn settle(&self, ids: Vec<String>) -> Result<(), String>;
}

/// The reports written since the last sync, and the pass that syncs them.
pub struct Settler {
    dir: PathBuf,
    journal: Arc<dyn ReportJournal>,
    pending: Mutex<Vec<Pending>>,
    /// One pass at a time: a pass that returns has settled everything
    /// written before it began.
    settling: tokio::sync::Mutex<()>,
    background: Once,
    every: Duration,
}

struct Pending {
    id: String,
    path: PathBuf,
}

impl Settler {
    /// Restores, from the journal, the files of reports whose sync did not
    /// happen (a crash), then empties the journal. Returns the settler and
    /// how many files were rewritten.
    pub async fn recover(
        dir: &Path,
        journal: Arc<dyn ReportJournal>,
        every: Duration,
    ) -> Result<(Arc<Self>, usize), String> {
        let unsettled = journal.unsettled().await?;
        let ids: Vec<String> = unsettled.iter().map(|(r, _)| r.id.clone()).collect();
        let root = dir.to_path_buf();
        let restored = tokio::task::spawn_blocking(move || restore(&root, &unsettled))
            .await
            .map_err(|e| format!("report recovery task failed: {e}"))??;
        if !ids.is_empty() {
            journal.settle(ids).await?;
        }
        let settler = Arc::new(Self {
            dir: dir.to_path_buf(),
            journal,
            pending: Mutex::default(),
            settling: tokio::sync::Mutex::new(()),
            background: Once::new(),
            every,
        });
        Ok((settler, restored))
    }

    pub fn journal(&self) -> &Arc<dyn ReportJournal> {
        &self.journal
    }

    /// Notes a report whose file was renamed into place and whose body is
    /// journaled; the background pass (started by the first report) syncs
    /// it within a pass interval ([`SETTLE_EVERY`] in the server).
    pub fn written(self: &Arc<Self>, id: String, path: PathBuf) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending { id, path });
        self.background.call_once(|| {
            tokio::spawn(settle_in_background(Arc::downgrade(self), self.every));
        });
    }

    /// Syncs the files of every report written before this call and drops
    /// their bodies from the journal. Returns how many were settled.
    pub async fn settle_now(&self) -> Result<usize, String> {
        let _one_pass = self.settling.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let paths: Vec<PathBuf> = batch.iter().map(|p| p.path.clone()).collect();
        let dir = self.dir.clone();
        let synced = tokio::task::spawn_blocking(move || sync_files(&dir, &paths))
            .await
            .map_err(|e| format!("report sync task failed: {e}"))
            .and_then(|r| r.map_err(|e| format!("cannot sync the reports: {e}")));
        if let Err(e) = synced {
            // Kept for the next pass (and in the journal meanwhile).
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
            return Err(e);
        }
        let n = batch.len();
        self.journal
            .settle(batch.into_iter().map(|p| p.id).collect())
            .await?;
        Ok(n)
    }
}

async fn settle_in_background(settler: Weak<Settler>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(settler) = settler.upgrade() else {
            return;
        };
        if let Err(e) = settler.settle_now().await {
            tracing::warn!(error = %e, "reports not yet synced to disk; their bodies stay in the database and the next pass retries");
        }
    }
}

/// Rewrites (atomically, synced) each journaled report whose file is not
/// its body, then syncs all of them. Returns how many were rewritten.
fn restore(dir: &Path, unsettled: &[(ReportRecord, String)]) -> Result<usize, String> {
    let mut restored = 0;
    let mut paths = Vec::with_capacity(unsettled.len());
    for (record, body) in unsettled {
        let relative = Path::new(&record.file);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            tracing::warn!(report = %record.id, file = %record.file, "a journaled report names a file outside the report directory; not restored");
            continue;
        }
        let path = dir.join(relative);
        if std::fs::read(&path).ok().as_deref() != Some(body.as_bytes()) {
            crate::reports::write_file(&path, body.as_bytes(), None).map_err(|e| e.to_string())?;
            restored += 1;
            tracing::debug!(report = %record.id, file = %record.file, "a report's file was lost in a crash before it was synced; restored from the database");
        }
        paths.push(path);
    }
    if !paths.is_empty() {
        sync_files(dir, &paths).map_err(|e| format!("cannot sync the restored reports: {e}"))?;
    }
    Ok(restored)
}

/// Makes the given files (renamed into place below `dir`) and their
/// directory entries durable: one `syncfs` of `dir`'s file system on Linux,
/// an fsync of each file and directory elsewhere. A file removed meanwhile
/// (retention) needs nothing.
#[cfg(target_os = "linux")]
fn sync_files(dir: &Path, _paths: &[PathBuf]) -> std::io::Result<()> {
    let root = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&root)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_files(_dir: &Path, paths: &[PathBuf]) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in paths {
        match std::fs::File::open(path) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for dir in dirs {
        // Some file systems cannot sync a directory.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::ReportStore;
    use crate::store::Store;

    fn database(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(&dir.join("bsm.db")).unwrap().0)
    }

    async fn journaled_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .unsettled()
            .await
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        ids.sort();
        ids
    }

    /// No background pass within a test.
    const NEVER: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_report_keeps_its_body_in_the_database_until_its_file_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let reports =
            ReportStore::open_journaled_every(dir.path().join("reports"), db.clone(), NEVER)
                .await
                .unwrap();
        let record = reports.write("p", "j1", "review", "# body").await.unwrap();
        let unsettled = db.unsettled().await.unwrap();
        assert_eq!(unsettled, vec![(record.clone(), "# body".to_string())]);
        assert_eq!(reports.settle().await.unwrap(), 1);
        assert!(db.unsettled().await.unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("reports").join(&record.file)).unwrap(),
            "# body",
            "the file stays"
        );
        assert_eq!(reports.settle().await.unwrap(), 0, "nothing left to sync");
    }

    #[tokio::test]
    async fn the_background_pass_settles_reports_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let reports = ReportStore::open_journaled(dir.path().join("reports"), db.clone())
            .await
            .unwrap();
        reports.write("p", "j1", "a", "# a").await.unwrap();
        reports.write("p", "j2", "b", "# b").await.unwrap();
        let deadline = std::time::Instant::now() + SETTLE_EVERY * 30;
        while !journaled_ids(&db).await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the journal was never emptied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn files_lost_or_torn_before_their_sync_are_restored_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let reports_dir = dir.path().join("reports");
        let (lost, torn, whole) = {
            let db = database(dir.path());
            let reports = ReportStore::open_journaled_every(&reports_dir, db.clone(), NEVER)
                .await
                .unwrap();
            let lost = reports.write("p", "j1", "lost", "# lost").await.unwrap();
            let torn = reports
                .write("p", "j2", "torn", "# torn, the whole text")
                .await
                .unwrap();
            let whole = reports.write("p", "j3", "whole", "# whole").await.unwrap();
            (lost, torn, whole)
            // Dropped unsettled: what a power cut leaves of unsynced files.
        };
        std::fs::remove_file(reports_dir.join(&lost.file)).unwrap();
        std::fs::write(reports_dir.join(&torn.file), "").unwrap();
        let whole_inode = inode(&reports_dir.join(&whole.file));

        let db = database(dir.path());
        let reports = ReportStore::open_journaled(&reports_dir, db.clone())
            .await
            .unwrap();
        for (record, text) in [(&lost, "# lost"), (&torn, "# torn, the whole text")] {
            let (_, markdown) = reports.get(&record.id).await.expect("listed");
            assert_eq!(markdown, text, "{} restored", record.name);
        }
        assert_eq!(
            inode(&reports_dir.join(&whole.file)),
            whole_inode,
            "a file that matches its body is left as it is"
        );
        assert!(journaled_ids(&db).await.is_empty(), "all settled");
        assert_eq!(reports.list().await.len(), 3);
    }

    #[tokio::test]
    async fn a_journaled_report_naming_a_file_outside_the_directory_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let record = ReportRecord {
            id: "r1".into(),
            plugin: "p".into(),
            job: "j".into(),
            name: "x.md".into(),
            file: "../escaped.md".into(),
            bytes: 3,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        };
        db.append_journaled(&record, "# x").await.unwrap();
        ReportStore::open_journaled(dir.path().join("reports"), db.clone())
            .await
            .unwrap();
        assert!(!dir.path().join("escaped.md").exists());
        assert!(journaled_ids(&db).await.is_empty());
    }

    #[cfg(unix)]
    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    #[cfg(not(unix))]
    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }
}
