//! The watched plugins directory: adding or replacing `<id>.wasm` or
//! `<id>.toml` installs the pair as a new version of `<id>`, through the same
//! checks as an upload (a refused pair leaves the current version serving).
//!
//! A file is only read once it is complete: changes are debounced, and a
//! file whose size or modification time still moves is waited for. The
//! atomic way to drop a plugin is still to write it elsewhere on the same
//! filesystem and rename it into place (`mv` is atomic, `cp` is not).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::deploy::{Deployer, Route, Upload};
use bsm_runtime::Manifest;

/// Quiet time after the last change before a plugin is read.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A file is complete when its size and modification time hold this long.
const STABLE_FOR: Duration = Duration::from_millis(100);
/// How long a file that keeps changing is waited for.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Keeps the watch alive; dropping it stops watching.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `dir` (and its subdirectories with `recursive`): after each
/// burst of changes has been quiet for a moment, `handle` gets the changed
/// paths.
pub fn watch_dir<H, F>(dir: &Path, recursive: bool, handle: H) -> anyhow::Result<DirWatch>
where
    H: Fn(BTreeSet<PathBuf>) -> F + Send + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(dir, mode)?;
    let task = tokio::spawn(async move {
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut changed = BTreeSet::from([first]);
            // Debounce: gather every change until the directory is quiet.
            while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                changed.insert(path);
            }
            handle(changed).await;
        }
    });
    Ok(DirWatch {
        _watcher: watcher,
        task,
    })
}

/// Starts watching the plugins directory; changed plugins are installed
/// by `deployer`.
pub fn watch_plugins_dir(dir: &Path, deployer: Arc<Deployer>) -> anyhow::Result<DirWatch> {
    let root = dir.to_path_buf();
    watch_dir(dir, false, move |paths| {
        let (root, deployer) = (root.clone(), deployer.clone());
        async move {
            let ids: BTreeSet<String> = paths.iter().filter_map(|p| plugin_id(p)).collect();
            for id in ids {
                install_from_dir(&root, &id, &deployer).await;
            }
        }
    })
}

/// The plugin id a changed file belongs to (`<id>.wasm`, `<id>.toml`);
/// temporary and hidden files are ignored.
fn plugin_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let name = name.strip_suffix(".sig").unwrap_or(name);
    let (stem, ext) = name.rsplit_once('.')?;
    matches!(ext, "wasm" | "toml").then(|| stem.to_string())
}

/// Reads the pair once both files are complete and installs it, unless it
/// is the version already serving.
async fn install_from_dir(dir: &Path, id: &str, deployer: &Deployer) {
    let manifest_path = dir.join(format!("{id}.toml"));
    let Ok(text) = wait_until_stable(&manifest_path).await else {
        return;
    };
    let text = String::from_utf8_lossy(&text).into_owned();
    let Ok(manifest) = Manifest::from_toml(&text, &manifest_path) else {
        // Installing reports the error with its code; nothing to compare.
        return install(deployer, id, text, Vec::new(), None).await;
    };
    let wasm_path = dir.join(
        manifest
            .wasm
            .clone()
            .unwrap_or_else(|| format!("{id}.wasm")),
    );
    let Ok(bytes) = wait_until_stable(&wasm_path).await else {
        return;
    };
    if deployer.is_serving(id, &manifest, &bytes) {
        return;
    }
    let signature = tokio::fs::read_to_string(format!("{}.sig", wasm_path.display()))
        .await
        .ok();
    install(deployer, id, text, bytes, signature).await;
}

async fn install(
    deployer: &Deployer,
    id: &str,
    manifest: String,
    component: Vec<u8>,
    signature: Option<String>,
) {
    let result = deployer
        .install(Upload {
            manifest,
            component,
            expected_id: Some(id.to_string()),
            canary: None,
            signature,
            route: Route::Directory,
        })
        .await;
    if let Ok(v) = result {
        tracing::info!(plugin = %id, version = %v.row.version, "installed from the plugins directory");
    }
}

/// The file's bytes once its size and modification time stop changing.
async fn wait_until_stable(path: &Path) -> Result<Vec<u8>, ()> {
    let started = tokio::time::Instant::now();
    let mut last = None;
    loop {
        let meta = tokio::fs::metadata(path).await.map_err(|_| ())?;
        let seen = (meta.len(), meta.modified().ok());
        if last == Some(seen) {
            return tokio::fs::read(path).await.map_err(|_| ());
        }
        if started.elapsed() > GIVE_UP_AFTER {
            tracing::warn!(path = %path.display(), "a plugin file kept changing; not installed");
            return Err(());
        }
        last = Some(seen);
        tokio::time::sleep(STABLE_FOR).await;
    }
}
