//! WAL checkpoints on a thread of their own.
//!
//! SQLite checkpoints a WAL database from inside a commit: the commit that
//! finds the log past 1,000 pages copies them into the database file and
//! fsyncs both before it returns. For the group-commit writer
//! ([`crate::batch_writer`]) that is every job waiting on that batch held
//! up by the copy and two fsyncs (14% of the writer's time in the fan-out's
//! profile, in stalls of milliseconds). Here the writer's connection only
//! signals, after a commit that leaves the log past the threshold, and a
//! second connection checkpoints in the background (`PASSIVE`: it never
//! blocks the writer, which goes on appending to the log meanwhile).

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode};

/// Log size (pages) past which a checkpoint is started: SQLite's own
/// automatic threshold.
pub const CHECKPOINT_PAGES: c_int = 1_000;

/// Replaces `writer`'s automatic checkpoints with a background thread
/// checkpointing the database at `path` (the writer's) once the log has
/// `threshold` pages. The thread ends when `writer` is closed.
pub fn start(writer: &mut Connection, path: &Path, threshold: c_int) -> rusqlite::Result<()> {
    let background = Connection::open(path)?;
    background.busy_timeout(std::time::Duration::from_secs(10))?;
    // A connection checkpoints only once it has opened the log, which it
    // does on its first read of a WAL database.
    let mode: String = background.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
            Some(format!("{} is not in WAL mode ({mode})", path.display())),
        ));
    }
    // A signal pending is enough: one checkpoint takes all the log has.
    let (signal, signals) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("bsm-db-checkpoint".into())
        .spawn(move || {
            while signals.recv().is_ok() {
                match background.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                    // Another connection (a CLI process's) is checkpointing.
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "a background checkpoint of the database failed")
                    }
                    Ok(_) => {}
                }
            }
        })
        .map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(format!("cannot start the checkpoint thread: {e}")),
            )
        })?;
    // Registering a WAL hook turns SQLite's automatic checkpoints off.
    writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: c_int| {
        if pages >= threshold {
            // Full: a checkpoint is already due. Disconnected: the thread
            // is gone (it only ends with this connection).
            let _ = signal.try_send(());
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A WAL database in `dir` with checkpoints started at `threshold`
    /// pages, after `rows` commits of a page or so each; returns the
    /// writer and the database file's size before the commits.
    fn written(dir: &Path, threshold: c_int, rows: i64) -> (Connection, u64) {
        let path = dir.join("db");
        let mut writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            )
            .unwrap();
        start(&mut writer, &path, threshold).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for i in 0..rows {
            writer
                .execute(
                    "INSERT INTO t (id, v) VALUES (?1, ?2)",
                    (i, "x".repeat(4000)),
                )
                .unwrap();
        }
        (writer, before)
    }

    #[test]
    fn the_writer_leaves_checkpoints_to_the_background_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, before) = written(dir.path(), 50, 200);
        // Only the background thread can copy pages into the file: the
        // writer's own checkpoints are off (the test below).
        let size = || std::fs::metadata(dir.path().join("db")).unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() <= before + 50 * 4096 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            size() > before + 50 * 4096,
            "pages reached the database file: {before} -> {} bytes",
            size()
        );
    }

    #[test]
    fn the_writer_no_longer_checkpoints_itself() {
        let dir = tempfile::tempdir().unwrap();
        // Past SQLite's automatic threshold (1,000 pages) and below ours.
        let (_writer, before) = written(dir.path(), 1_000_000, 1_500);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            std::fs::metadata(dir.path().join("db")).unwrap().len(),
            before,
            "no commit copied the log into the database file"
        );
    }
}
