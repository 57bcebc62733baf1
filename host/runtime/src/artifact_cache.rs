//! Compiled components cached on disk, keyed by content hash and engine
//! configuration, so a restart loads a plugin in ~0.1 ms instead of
//! recompiling it for ~60 ms.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The hex SHA-256 of a component's bytes; names the plugin's exact build.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where compiled artifacts live; `None` compiles every time.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

impl ArtifactCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// Loads the compiled form of `bytes` from the cache, or compiles and
    /// stores it. A cache that cannot be read or written only costs time: the
    /// component is compiled and the problem logged.
    pub fn load(&self, engine: &Engine, bytes: &[u8], digest: &str) -> anyhow::Result<Component> {
        let Some(dir) = &self.dir else {
            return compile(engine, bytes);
        };
        let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_key(engine)));
        if path.is_file() {
            // SAFETY: the file is in the host's own cache directory, written by
            // `store` below from `Component::serialize` of this exact engine
            // configuration (the key includes its compatibility hash).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable compiled artifact")
                }
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled component");
        }
        Ok(component)
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Ok(Component::new(engine, bytes)?)
}

fn engine_key(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Writes atomically: temporary file, fsync, rename. A crash leaves either
/// no artifact or a whole one.
fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().context("artifact path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
