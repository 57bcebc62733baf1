//! The plugin author's loop: `bsm plugin test` (build, then run the
//! crate's tests against the component) and `bsm plugin dev` (rebuild on
//! every change and hot-swap the new version into a running server).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use notify::{RecursiveMode, Watcher};

use crate::scaffold::HOST_TARGET;

/// A plugin crate on disk: where its component and manifest end up.
#[derive(Clone)]
pub struct PluginCrate {
    pub dir: PathBuf,
    pub component: PathBuf,
    pub manifest: PathBuf,
}

impl PluginCrate {
    /// The crate in `dir` (its `Cargo.toml` names the package; the
    /// component is `<target>/wasm32-wasip2/release/<crate>.wasm`).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let cargo_toml = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&cargo_toml).with_context(|| {
            format!(
                "{} is not a plugin crate (no readable Cargo.toml); create one with `bsm plugin new NAME`",
                dir.display()
            )
        })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", cargo_toml.display(), e.message()))?;
        let name = table
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{} names no package", cargo_toml.display()))?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { dir.join(t) })
            .unwrap_or_else(|| dir.join("target"));
        let component = target
            .join("wasm32-wasip2")
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        Ok(Self {
            dir: dir.to_path_buf(),
            component,
            manifest: dir.join("plugin.toml"),
        })
    }

    /// `cargo build --release` (the crate's `.cargo/config.toml` targets
    /// wasm32-wasip2). `Err` carries the compiler's errors.
    pub fn build(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let output = Command::new(cargo())
            .arg("build")
            .arg("--release")
            .arg("--target")
            .arg("wasm32-wasip2")
            .arg("--color")
            .arg("never")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if output.status.success() && self.component.is_file() {
            return Ok(started.elapsed());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return Err(format!(
                "cargo built no {}: is the crate a cdylib?",
                self.component.display()
            ));
        }
        // The compiler's diagnostics, without cargo's progress lines.
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim_start().starts_with("Compiling ") && !l.trim().is_empty())
            .collect();
        Err(errors.join("\n"))
    }
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `bsm plugin test [DIR]`: builds the component, then runs the crate's
/// tests on this machine with the harness pointed at it and at this `bsm`.
pub fn test(dir: &Path, cargo_args: &[String]) -> anyhow::Result<ExitCode> {
    let plugin = PluginCrate::open(dir)?;
    match plugin.build() {
        Ok(took) => eprintln!(
            "built {} in {:.1} s",
            plugin.component.display(),
            took.as_secs_f64()
        ),
        Err(errors) => bail!("the build failed:\n{errors}"),
    }
    let bsm = std::env::current_exe().context("cannot find this bsm executable")?;
    let status = Command::new(cargo())
        .arg("test")
        .arg("--target")
        .arg(HOST_TARGET)
        .args(cargo_args)
        .current_dir(dir)
        .env("BSM_BIN", bsm)
        .env("BSM_PLUGIN_COMPONENT", &plugin.component)
        .env("BSM_PLUGIN_MANIFEST", &plugin.manifest)
        .status()
        .context("cannot run cargo test")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `bsm plugin dev [DIR] --server URL`: builds and installs now, then again
/// on every change of the crate's sources or manifest, until interrupted.
/// A failed build or a refused version leaves the serving one in place.
pub async fn dev(dir: &Path, server: &str) -> anyhow::Result<ExitCode> {
    // Absolute, so that the watcher's event paths compare with ours.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("{} is not a directory", dir.display()))?;
    let plugin = PluginCrate::open(dir)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sources = [dir.join("src"), dir.join("wit")];
    let manifests = [dir.join("Cargo.toml"), dir.join("plugin.toml")];
    let relevant = move |path: &Path| {
        sources.iter().any(|s| path.starts_with(s)) || manifests.iter().any(|m| path == m)
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
            && event.paths.iter().any(|p| relevant(p))
        {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the plugin crate")?;
    // The crate's directory itself, not each manifest file: an editor that
    // saves by renaming a new file over the old one replaces the watched
    // file, and a watch on it would go quiet.
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    for sources in ["src", "wit"] {
        let path = dir.join(sources);
        if path.exists() {
            watcher
                .watch(&path, RecursiveMode::Recursive)
                .with_context(|| format!("cannot watch {}", path.display()))?;
        }
    }
    println!(
        "watching {} (src/, Cargo.toml, plugin.toml); installing into {server}",
        dir.display()
    );
    loop {
        round(&plugin, server).await;
        // Wait for a change, then for the editor to finish saving.
        if rx.recv().await.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return Ok(ExitCode::SUCCESS),
                Err(_) => break,
            }
        }
        println!("change seen: rebuilding");
    }
}

/// One build-and-install, reported on stdout.
async fn round(plugin: &PluginCrate, server: &str) {
    let building = plugin.clone();
    let build = tokio::task::spawn_blocking(move || building.build()).await;
    let took = match build {
        Ok(Ok(took)) => took,
        Ok(Err(errors)) => {
            println!("build failed; the serving version stays:\n{errors}");
            return;
        }
        Err(e) => {
            println!("build failed; the serving version stays: {e}");
            return;
        }
    };
    println!("built in {:.1} s", took.as_secs_f64());
    match crate::remote::install(&plugin.component, &plugin.manifest, None, server).await {
        Ok(installed) => println!("live: {installed}"),
        Err(e) => println!(
            "refused; the serving version stays: {}",
            format!("{e:#}").replace('\n', " ")
        ),
    }
}
