//! Crash-safe file replacement for the index files: a reader (or a restart)
//! sees the old file or the new one, never a torn one.

use std::fs::{self, File};
use std::path::Path;

use crate::error::KnowledgeError;

/// fsyncs the finished temporary file `tmp`, renames it over `path`, and
/// fsyncs the directory so that the rename itself survives a crash.
pub fn sync_and_rename(tmp: &Path, path: &Path) -> Result<(), KnowledgeError> {
    let fail = |what: &str, e: std::io::Error| {
        KnowledgeError::Storage(format!("{what} {}: {e}", path.display()))
    };
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("syncing", e))?;
    fs::rename(tmp, path).map_err(|e| fail("replacing", e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("syncing the directory of", e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename,
/// fsync of the directory).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KnowledgeError> {
    use bsm_runtime::atomic_file::{Durability, write};
    write(path, bytes, Durability::SyncFileAndDir)
        .map_err(|e| KnowledgeError::Storage(format!("writing {}: {e}", path.display())))
}
