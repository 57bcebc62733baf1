//! Compiled components cached on disk, keyed by content hash and engine
//! configuration, so a restart loads a plugin in ~0.1 ms instead of
//! recompiling it for ~60 ms.
//!
//! An artifact is native code that is run as it is: it is only read from a
//! directory the host can trust (owned by the user the host runs as, not
//! writable by group or others; the file likewise). In any other directory
//! a planted artifact would be executed, so the cache is not used there:
//! components are compiled instead, and the log says why, once.
//!
//! With a [`CompilerProcess`], a missing artifact is compiled by a child
//! process that writes it into the cache and exits: the compiler's memory
//! (cranelift's buffers, kept by the allocator's per-thread heaps and the
//! parallel compiler's threads) and its code pages never stay resident in
//! the long-running host. Compiling the BSM agents in-process left an idle
//! server at 63-66 MB resident against 41 MB when the artifacts were
//! already cached (see BENCHMARKS.md). A compiler crash also ends only the
//! child.

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

/// A program that compiles a component (its bytes on stdin) into the
/// artifact file named by its last argument, with the engine that
/// [`crate::engine::build_engine`] builds for `--max-instances N` (given
/// before the file): `bsm` itself, with a hidden subcommand.
///
/// Contract: exit 0 once the file is written whole (atomically); exit
/// [`CompilerProcess::INVALID`] with the reason on stderr when the bytes are
/// not a valid component; anything else is a failure of the compiler, after
/// which the host compiles in-process.
#[derive(Debug, Clone)]
pub struct CompilerProcess {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

impl CompilerProcess {
    /// The exit status that means "not a valid component".
    pub const INVALID: i32 = 65;

    /// Compiles `bytes` into `out`. `Ok(Err(reason))`: the component is
    /// invalid; `Err`: the compiler itself failed.
    fn compile_to(
        &self,
        max_instances: u32,
        bytes: &[u8],
        out: &Path,
    ) -> anyhow::Result<Result<(), String>> {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg("--max-instances")
            .arg(max_instances.to_string())
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        // A child that dies early closes the pipe: its status says why.
        let written = stdin.write_all(bytes);
        drop(stdin);
        let output = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        match output.status.code() {
            Some(0) if out.is_file() => Ok(Ok(())),
            Some(Self::INVALID) => Ok(Err(stderr)),
            _ => {
                written.context("writing the component to the compiler")?;
                anyhow::bail!("the compiler process failed ({}): {stderr}", output.status)
            }
        }
    }
}

/// Where compiled artifacts live; `None` compiles every time.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    /// The compiler process and the engine's pool size it builds for.
    compiler: Option<(CompilerProcess, u32)>,
    /// The untrusted directory was reported (once per cache).
    warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ArtifactCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            compiler: None,
            warned: Default::default(),
        }
    }

    /// Missing artifacts are compiled by `compiler` in a process of its
    /// own, for the engine [`crate::engine::build_engine`] builds from `pool`.
    pub fn with_compiler(
        mut self,
        compiler: Option<CompilerProcess>,
        pool: &crate::engine::PoolSettings,
    ) -> Self {
        self.compiler = compiler.map(|c| (c, pool.max_instances));
        self
    }

    /// Loads the compiled form of `bytes` from the cache, or compiles and
    /// stores it. A cache that cannot be read or written only costs time: the
    /// component is compiled and the problem logged.
    pub fn load(&self, engine: &Engine, bytes: &[u8], digest: &str) -> anyhow::Result<Component> {
        let Some(dir) = &self.dir else {
            return compile(engine, bytes);
        };
        if let Err(why) = prepare_trusted_dir(dir) {
            if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(dir = %dir.display(), reason = %why, "compiled artifacts are not read from or written to this directory: it cannot be trusted; components are compiled instead");
            }
            return compile(engine, bytes);
        }
        let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_key(engine)));
        if path.is_file() && trusted(&path).is_ok() {
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
        if let Some((compiler, max_instances)) = &self.compiler {
            match compiler.compile_to(*max_instances, bytes, &path) {
                Ok(Ok(())) => {
                    // SAFETY: as above; the file was just written by our own
                    // compiler process with this engine's configuration.
                    match unsafe { Component::deserialize_file(engine, &path) } {
                        Ok(component) => return Ok(component),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "the compiler process wrote an artifact this host cannot load; compiling in-process")
                        }
                    }
                }
                Ok(Err(invalid)) => anyhow::bail!("{invalid}"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "compiling in-process instead")
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

/// Creates the directory (private to this user) if it is missing, and says
/// why it cannot be trusted if it cannot.
fn prepare_trusted_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make it private: {e}"))?;
        }
    }
    trusted(dir)
}

/// A file or directory is trusted when this user owns it and nobody else
/// may write to it.
#[cfg(unix)]
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this host's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn trusted(_: &Path) -> Result<(), String> {
    Ok(())
}

fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Ok(Component::new(engine, bytes)?)
}

fn engine_key(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    write_atomically(path, &component.serialize()?)
}

/// Writes an artifact atomically (fsync'd, then renamed): a crash leaves
/// either no artifact or a whole one, and compiles of the same component
/// racing to store it each rename a whole file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::atomic_file::write(path, bytes, crate::atomic_file::Durability::SyncFile)
        .with_context(|| format!("writing {}", path.display()))
}
