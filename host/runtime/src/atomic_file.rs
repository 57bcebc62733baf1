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

/// Creates `path`, which should not exist yet (a fresh name), whole: a
/// reader sees no file, then all of it. On Linux the content is written to
/// an unnamed file in the directory (`O_TMPFILE`) which is then linked
/// under its name: no temporary name is created, renamed or left behind
/// by a crash, which made a report's file cost two directory updates
/// instead of one. Where that is not supported, or `path` exists after
/// all, this is [`write()`] (which replaces it).
pub fn create_new(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if unnamed::create(path, bytes, durability)? {
        return Ok(());
    }
    write(path, bytes, durability)
}

#[cfg(target_os = "linux")]
mod unnamed {
    use std::ffi::CString;
    use std::fs::OpenOptions;
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::io::AsRawFd as _;
    use std::path::Path;

    use super::{Durability, sync_dir};

    /// `Ok(false)`: not done, nothing written (no `O_TMPFILE` here, or
    /// the name is taken); the caller falls back to a temporary name.
    pub(super) fn create(
        path: &Path,
        bytes: &[u8],
        durability: Durability,
    ) -> std::io::Result<bool> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let open = || {
            OpenOptions::new()
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
        };
        let opened = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                open()
            }
            opened => opened,
        };
        let mut file = match opened {
            Ok(file) => file,
            // Kernels or file systems without O_TMPFILE.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        file.write_all(bytes)?;
        if durability != Durability::Atomic {
            file.sync_all()?;
        }
        // The unnamed file is named through its descriptor's /proc entry
        // (linkat with AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
        let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .expect("no NUL in a number");
        let to = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both are valid NUL-terminated paths for the duration of
        // the call.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                // Taken after all (replace it the usual way), or no /proc.
                Some(libc::EEXIST | libc::ENOENT) => Ok(false),
                _ => Err(e),
            };
        }
        if durability == Durability::SyncFileAndDir {
            sync_dir(dir);
        }
        Ok(true)
    }
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

    /// `path` is the only entry of its directory: no temporary file left.
    fn assert_alone(path: &Path) {
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
    }

    /// A directory with a file in it where a write wants its file.
    fn directory_in_the_way(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("target");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        path
    }

    fn assert_still_there(directory: &Path) {
        assert_eq!(
            std::fs::read_to_string(directory.join("inside")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("file.bin");
        write(&path, b"first", Durability::SyncFileAndDir).unwrap();
        write(&path, b"second, longer", Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_alone(&path);
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
        // A directory in the way: the rename fails.
        let path = directory_in_the_way(dir.path());
        assert!(write(&path, b"new", Durability::SyncFile).is_err());
        assert_still_there(&path);
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

    #[test]
    fn a_new_file_appears_whole_under_its_name_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports").join("a.md");
        create_new(&path, b"whole report", Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole report");
        assert_alone(&path);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "readable by its owner only, like write()'s"
            );
        }
    }

    #[test]
    fn creating_a_name_that_exists_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.md");
        std::fs::write(&path, "old and longer").unwrap();
        create_new(&path, b"new", Durability::SyncFileAndDir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn creating_over_a_directory_fails_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = directory_in_the_way(dir.path());
        assert!(create_new(&path, b"new", Durability::Atomic).is_err());
        assert_still_there(&path);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no leftover"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_a_new_file_is_written_unnamed_then_linked() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.md");
        let supported = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(dir.path())
            .is_ok();
        if !supported {
            // Some file systems have no O_TMPFILE: `create_new` falls back
            // to write() there (tested above); nothing to check here.
            eprintln!("no O_TMPFILE in {}: skipped", dir.path().display());
            return;
        }
        assert!(
            unnamed::create(&path, b"linked", Durability::SyncFile).unwrap(),
            "O_TMPFILE and linkat work here, without a temporary name"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"linked");
        assert!(
            !unnamed::create(&path, b"again", Durability::Atomic).unwrap(),
            "a taken name is left to write()"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"linked");
    }
}
