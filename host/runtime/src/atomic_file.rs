//! Replacing a file whole: a reader, a restart or a concurrent writer sees
//! the old content or a new one, never a torn file.
//!
//! The host writes several kinds of files this way (compiled artifacts,
//! reports, knowledge indexes, uploaded components, recordings), with the
//! durability each needs. The temporary file is created by `tempfile`
//! (a fresh name opened exclusively beside the target), so writers of the
//! same path never share one: two compiles of the same component racing to
//! cache it each rename a whole artifact.

use std::io::Write as _;
use std::path::Path;

/// Prefix of the temporary files: what a crash leaves behind can be
/// recognised and removed.
pub const TMP_PREFIX: &str = ".tmp-";

/// How durable the new content is when [`write()`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic against a crash of the process; the OS writes it back when it
    /// will (someone else makes it durable, or a loss costs only time).
    Atomic,
    /// The content is fsync'd before the rename: after a machine crash the
    /// file is the old one or the whole new one.
    SyncFile,
    /// As `SyncFile`, and the directory is fsync'd after the rename, so the
    /// new name itself survives a machine crash.
    SyncFileAndDir,
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, creating the directory if needed.
pub fn write(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durability != Durability::Atomic {
        tmp.as_file().sync_all()?;
    }
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| e.error)?;
    if durability == Durability::SyncFileAndDir {
        sync_dir(dir);
    }
    Ok(())
}

/// fsyncs a directory so that the renames made in it survive a machine
/// crash. Errors are ignored: some file systems cannot sync a directory,
/// and the files themselves were synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("file.bin");
        write(&path, b"first", Durability::SyncFileAndDir).unwrap();
        write(&path, b"second, longer", Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.bin")]);
    }

    #[test]
    fn writers_racing_on_one_path_each_leave_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact.cwasm");
        let contents: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 256 * 1024 + i as usize]).collect();
        for _ in 0..20 {
            std::thread::scope(|s| {
                for content in &contents {
                    let path = &path;
                    s.spawn(move || write(path, content, Durability::Atomic).unwrap());
                }
            });
            let found = std::fs::read(&path).unwrap();
            assert!(
                contents.contains(&found),
                "a torn file of {} bytes",
                found.len()
            );
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        // A directory in the way: the rename fails.
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        assert!(write(&path, b"new", Durability::SyncFile).is_err());
        assert_eq!(
            std::fs::read_to_string(path.join("inside")).unwrap(),
            "kept"
        );
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(TMP_PREFIX)
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
