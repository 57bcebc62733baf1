//! Hot swap: new plugin versions arrive (upload, watched directory), are
//! checked completely before they may serve, become current (or a canary
//! taking a share of new runs), and can be promoted, rolled back or removed
//! in a running host. Every version is kept on disk, content-addressed by
//! digest, and recorded in the database, so a restart serves what was
//! served before. A new version on probation whose own failures pass the
//! threshold is rolled back by the host itself.
//!
//! Runs are never disturbed: a run holds the version it started on until it
//! ends; the registry swaps atomically; the bulkhead belongs to the plugin
//! id, so limits are neither doubled nor lost during a swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::settings::PluginSettings;
use crate::signing::{SignatureError, TrustedKeys};
use crate::store::{Store, StoreError, VersionRow};
use bsm_runtime::artifact_cache;
use bsm_runtime::header::check_header;
use bsm_runtime::{Manifest, Plugin, Runtime};

/// Why a version was refused or an operation could not be done. The
/// current version keeps serving in every case.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeployError {
    /// Stable code: `INVALID_MANIFEST`, `INVALID_COMPONENT`, `WRONG_WORLD`,
    /// `DESCRIBE_FAILED`, `ID_MISMATCH`, `NO_CURRENT_VERSION`,
    /// `VERSION_NOT_FOUND`, `NO_PREVIOUS_VERSION`, `PLUGIN_NOT_FOUND`,
    /// `STORAGE_ERROR`.
    pub code: &'static str,
    pub message: String,
}

impl DeployError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<SignatureError> for DeployError {
    fn from(e: SignatureError) -> Self {
        Self::new(e.code, e.message)
    }
}

impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        Self::new("STORAGE_ERROR", e.to_string())
    }
}

/// How a version arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Api,
    Directory,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Api => "api",
            Route::Directory => "directory",
        }
    }
}

/// A version to install.
pub struct Upload {
    /// The manifest, as TOML.
    pub manifest: String,
    /// The component.
    pub component: Vec<u8>,
    /// The id the caller expects (the URL's); `None` takes the manifest's.
    pub expected_id: Option<String>,
    /// `Some(p)`: install as a canary taking `p`% of new runs.
    pub canary: Option<u8>,
    /// Detached signature (hex) over the component's digest; required when
    /// trusted keys are configured.
    pub signature: Option<String>,
    pub route: Route,
}

/// A version as the versions list shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    #[serde(flatten)]
    pub row: VersionRow,
    /// Whether it is the version new runs go to (the canary counts too).
    pub live: bool,
}

/// A version being watched after it went live.
struct Probation {
    seq: i64,
    plugin: Weak<Plugin>,
    runs: u32,
    max_failure_rate: f64,
}

/// The live versions' rows, to record their state changes.
#[derive(Default, Clone, Copy)]
struct Live {
    current: Option<i64>,
    canary: Option<i64>,
}

/// Installs, keeps and rolls back plugin versions of a running host.
pub struct Deployer {
    runtime: Arc<Runtime>,
    store: Store,
    dir: PathBuf,
    settings: PluginSettings,
    trusted: TrustedKeys,
    /// One change at a time: installs, rollbacks, promotions, removals.
    changes: tokio::sync::Mutex<()>,
    live: Mutex<HashMap<String, Live>>,
    probation: Mutex<HashMap<String, Probation>>,
    /// Weak self, for automatic rollbacks started from a run.
    this: Weak<Deployer>,
}

impl Deployer {
    /// A deployer keeping components under `dir` (content-addressed).
    pub fn new(
        runtime: Arc<Runtime>,
        store: Store,
        dir: PathBuf,
        settings: PluginSettings,
        trusted: TrustedKeys,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            runtime,
            store,
            dir,
            settings,
            trusted,
            changes: tokio::sync::Mutex::new(()),
            live: Mutex::default(),
            probation: Mutex::default(),
            this: this.clone(),
        })
    }

    fn component_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Serves again what was served before the last stop: every plugin's
    /// current version (and canary) as recorded, and removed plugins stay
    /// removed. A version that no longer loads is logged; the plugins
    /// directory's version then serves.
    pub async fn restore(&self) -> Result<usize, DeployError> {
        let rows = self.store.latest_versions().await?;
        let mut latest: HashMap<String, Vec<VersionRow>> = HashMap::new();
        for row in rows {
            latest.entry(row.plugin_id.clone()).or_default().push(row);
        }
        let mut restored = 0;
        for (id, rows) in latest {
            let newest = rows.iter().max_by_key(|r| r.seq).expect("at least one");
            if newest.status == "removed" {
                self.runtime.registry().remove(&id);
                continue;
            }
            for row in rows.iter().filter(|r| r.status == "current") {
                match self.build(row).await {
                    Ok(plugin) => {
                        self.runtime.registry().install(plugin);
                        self.live
                            .lock()
                            .unwrap()
                            .entry(id.clone())
                            .or_default()
                            .current = Some(row.seq);
                        restored += 1;
                    }
                    Err(e) => {
                        tracing::error!(plugin = %id, version = %row.version, error = %e, "a recorded version no longer loads; serving the plugins directory's")
                    }
                }
            }
            for row in rows.iter().filter(|r| r.status == "canary") {
                if let Ok(plugin) = self.build(row).await
                    && self
                        .runtime
                        .registry()
                        .install_canary(plugin, row.canary_percent.unwrap_or(10))
                {
                    self.live
                        .lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .canary = Some(row.seq);
                    restored += 1;
                }
            }
        }
        Ok(restored)
    }

    /// Loads a recorded version from its stored component and manifest
    /// (compiled artifacts are reused).
    async fn build(&self, row: &VersionRow) -> Result<Arc<Plugin>, DeployError> {
        let path = self.component_path(&row.digest);
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            DeployError::new(
                "VERSION_NOT_FOUND",
                format!(
                    "the component of {} {} is gone: {e}",
                    row.plugin_id, row.version
                ),
            )
        })?;
        let manifest = Manifest::from_toml(&row.manifest, Path::new("<recorded manifest>"))
            .map_err(|m| DeployError::new("INVALID_MANIFEST", m))?;
        self.runtime
            .build_plugin(manifest, bytes, path)
            .await
            .map_err(|e| DeployError::new(e.stage.code(), e.to_string()))
    }

    /// Checks a new version completely (manifest, component, world,
    /// `describe()` within its budget, id) and makes it current, or a
    /// canary. A refused version changes nothing.
    pub async fn install(&self, upload: Upload) -> Result<VersionView, DeployError> {
        let result = self.install_checked(upload).await;
        let outcome = match &result {
            Ok(_) => "installed",
            Err(e) => e.code,
        };
        metrics::counter!("bsm_plugin_installs_total", "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            tracing::warn!(code = e.code, error = %e.message, "plugin version refused; the current version keeps serving");
        }
        result
    }

    async fn install_checked(&self, upload: Upload) -> Result<VersionView, DeployError> {
        let manifest = Manifest::from_toml(&upload.manifest, Path::new("manifest"))
            .map_err(|m| DeployError::new("INVALID_MANIFEST", m))?;
        if let Some(expected) = &upload.expected_id
            && expected != &manifest.id
        {
            return Err(DeployError::new(
                "ID_MISMATCH",
                format!("the manifest is for {:?}, not {expected:?}", manifest.id),
            ));
        }
        manifest
            .validate()
            .map_err(|m| DeployError::new("INVALID_MANIFEST", m))?;
        check_header(&upload.component).map_err(|m| DeployError::new("INVALID_COMPONENT", m))?;
        let digest = artifact_cache::digest(&upload.component);
        self.trusted.verify(&digest, upload.signature.as_deref())?;
        let path = self.component_path(&digest);
        let size = upload.component.len() as u64;
        let id = manifest.id.clone();
        let version = manifest.version.clone();

        let _change = self.changes.lock().await;
        self.ensure_recorded(&id).await?;
        if upload.canary.is_some() && self.runtime.registry().current(&id).is_none() {
            return Err(DeployError::new(
                "NO_CURRENT_VERSION",
                format!("{id:?} has no current version to run a canary beside; install it first"),
            ));
        }
        let plugin = self
            .runtime
            .build_plugin(manifest, upload.component.clone(), path.clone())
            .await
            .map_err(|e| DeployError::new(e.stage.code(), e.to_string()))?;
        if plugin.described.id != id {
            return Err(DeployError::new(
                "ID_MISMATCH",
                format!(
                    "describe() says {:?} but the manifest says {id:?}",
                    plugin.described.id
                ),
            ));
        }
        write_once(&path, &upload.component)
            .await
            .map_err(|e| DeployError::new("STORAGE_ERROR", e))?;

        let status = if upload.canary.is_some() {
            "canary"
        } else {
            "current"
        };
        let row = VersionRow {
            seq: 0,
            plugin_id: id.clone(),
            version,
            digest,
            size,
            manifest: upload.manifest,
            installed_at: crate::store::now(),
            route: upload.route.as_str().into(),
            status: status.into(),
            canary_percent: upload.canary.map(|p| p.clamp(1, 99)),
            runs: 0,
            failures: 0,
            reason: None,
        };
        let seq = self.store.insert_version(&row).await?;
        let live = self.live_of(&id);
        match upload.canary {
            Some(percent) => {
                if let Some(old) = live.canary {
                    self.retire(
                        &id,
                        old,
                        "rolled_back",
                        Some("replaced by a newer canary".into()),
                    )
                    .await?;
                }
                self.runtime
                    .registry()
                    .install_canary(plugin.clone(), percent);
                self.set_live(&id, |l| l.canary = Some(seq));
            }
            None => {
                let previous = self.runtime.registry().install(plugin.clone());
                if let Some(old) = live.current {
                    self.retire_with(&id, old, "previous", None, previous.as_deref())
                        .await?;
                }
                if let Some(old) = live.canary {
                    self.retire(
                        &id,
                        old,
                        "rolled_back",
                        Some("a new current version was installed".into()),
                    )
                    .await?;
                }
                self.set_live(&id, |l| {
                    l.current = Some(seq);
                    l.canary = None;
                });
            }
        }
        self.watch(&plugin, seq);
        self.prune(&id).await;
        tracing::info!(plugin = %id, version = %plugin.manifest.version, digest = %plugin.short_digest(), status, "plugin version installed");
        Ok(VersionView {
            row: VersionRow { seq, ..row },
            live: true,
        })
    }

    /// Whether this manifest and component are the version serving `id`
    /// now (so an unchanged file is not installed again).
    pub fn is_serving(&self, id: &str, manifest: &Manifest, component: &[u8]) -> bool {
        self.runtime.registry().current(id).is_some_and(|p| {
            &p.manifest == manifest && p.digest == artifact_cache::digest(component)
        })
    }

    /// Records the current version of `id` when it came from the plugins
    /// directory at start (not through the deployer), so that it can be
    /// rolled back to and is listed with the others.
    async fn ensure_recorded(&self, id: &str) -> Result<(), DeployError> {
        if self.live_of(id).current.is_some() {
            return Ok(());
        }
        let Some(plugin) = self.runtime.registry().current(id) else {
            return Ok(());
        };
        let bytes = tokio::fs::read(&plugin.source).await.map_err(|e| {
            DeployError::new(
                "STORAGE_ERROR",
                format!("cannot keep the serving version of {id:?}: {e}"),
            )
        })?;
        write_once(&self.component_path(&plugin.digest), &bytes)
            .await
            .map_err(|e| DeployError::new("STORAGE_ERROR", e))?;
        let row = VersionRow {
            seq: 0,
            plugin_id: id.into(),
            version: plugin.manifest.version.clone(),
            digest: plugin.digest.clone(),
            size: bytes.len() as u64,
            manifest: toml::to_string(&plugin.manifest).unwrap_or_default(),
            installed_at: crate::store::now(),
            route: Route::Directory.as_str().into(),
            status: "current".into(),
            canary_percent: None,
            runs: 0,
            failures: 0,
            reason: None,
        };
        let seq = self.store.insert_version(&row).await?;
        self.set_live(id, |l| l.current = Some(seq));
        Ok(())
    }

    /// Makes the canary of `id` current.
    pub async fn promote(&self, id: &str) -> Result<VersionView, DeployError> {
        let _change = self.changes.lock().await;
        let live = self.live_of(id);
        let Some(canary_seq) = live.canary else {
            return Err(DeployError::new(
                "NO_CANARY",
                format!("{id:?} has no canary to promote"),
            ));
        };
        let previous = self.runtime.registry().current(id);
        self.runtime.registry().promote(id).ok_or_else(|| {
            DeployError::new("NO_CANARY", format!("{id:?} has no canary to promote"))
        })?;
        if let Some(old) = live.current {
            self.retire_with(id, old, "previous", None, previous.as_deref())
                .await?;
        }
        self.store
            .set_version_status(canary_seq, "current", None, None)
            .await?;
        self.set_live(id, |l| {
            l.current = Some(canary_seq);
            l.canary = None;
        });
        self.view(id, canary_seq).await
    }

    /// Takes a canary out (when there is one and no version is named), or
    /// makes an earlier version current again: the named one, else the one
    /// before the current.
    pub async fn rollback(
        &self,
        id: &str,
        version: Option<&str>,
        reason: &str,
    ) -> Result<VersionView, DeployError> {
        let _change = self.changes.lock().await;
        self.ensure_recorded(id).await?;
        self.rollback_locked(id, version, reason).await
    }

    async fn rollback_locked(
        &self,
        id: &str,
        version: Option<&str>,
        reason: &str,
    ) -> Result<VersionView, DeployError> {
        let live = self.live_of(id);
        if version.is_none()
            && let Some(canary) = live.canary
        {
            let dropped = self.runtime.registry().drop_canary(id);
            self.retire_with(
                id,
                canary,
                "rolled_back",
                Some(reason.into()),
                dropped.as_deref(),
            )
            .await?;
            self.set_live(id, |l| l.canary = None);
            self.probation.lock().unwrap().remove(id);
            let current = live.current.ok_or_else(|| {
                DeployError::new(
                    "PLUGIN_NOT_FOUND",
                    format!("{id:?} has no recorded version"),
                )
            })?;
            return self.view(id, current).await;
        }
        let rows = self.store.versions(id).await?;
        let target = match version {
            Some(v) => rows
                .iter()
                .find(|r| r.version == v && Some(r.seq) != live.current)
                .ok_or_else(|| {
                    DeployError::new(
                        "VERSION_NOT_FOUND",
                        format!("{id:?} has no kept version {v:?} other than the current one"),
                    )
                })?,
            None => rows
                .iter()
                .find(|r| r.status == "previous" && live.current.is_none_or(|c| r.seq < c))
                .ok_or_else(|| {
                    DeployError::new(
                        "NO_PREVIOUS_VERSION",
                        format!("{id:?} has no earlier version to roll back to"),
                    )
                })?,
        };
        let plugin = self.build(target).await?;
        let replaced = self.runtime.registry().install(plugin.clone());
        if let Some(old) = live.current {
            self.retire_with(
                id,
                old,
                "rolled_back",
                Some(reason.into()),
                replaced.as_deref(),
            )
            .await?;
        }
        if let Some(old) = live.canary {
            self.retire(id, old, "rolled_back", Some(reason.into()))
                .await?;
        }
        self.store
            .set_version_status(target.seq, "current", None, None)
            .await?;
        self.set_live(id, |l| {
            l.current = Some(target.seq);
            l.canary = None;
        });
        self.probation.lock().unwrap().remove(id);
        metrics::counter!("bsm_plugin_rollbacks_total", "plugin" => id.to_string()).increment(1);
        tracing::warn!(plugin = %id, to = %target.version, reason, "plugin rolled back");
        self.view(id, target.seq).await
    }

    /// Unloads a plugin: new runs are refused, runs in flight finish. It
    /// stays removed across restarts until a version is installed again.
    pub async fn remove(&self, id: &str) -> Result<(), DeployError> {
        let _change = self.changes.lock().await;
        // A plugin of the plugins directory is recorded first, so that a
        // restart does not bring it back.
        self.ensure_recorded(id).await?;
        let Some(removed) = self.runtime.registry().remove(id) else {
            return Err(DeployError::new(
                "PLUGIN_NOT_FOUND",
                format!("no plugin {id:?} is loaded"),
            ));
        };
        let live = self.live_of(id);
        if let Some(seq) = live.current {
            self.retire_with(id, seq, "removed", Some("removed".into()), Some(&removed))
                .await?;
        }
        if let Some(seq) = live.canary {
            self.retire(id, seq, "removed", Some("removed".into()))
                .await?;
        }
        self.live.lock().unwrap().remove(id);
        self.probation.lock().unwrap().remove(id);
        tracing::info!(plugin = %id, "plugin removed");
        Ok(())
    }

    /// The kept versions of a plugin, newest first, with the live ones'
    /// run counts as of now.
    pub async fn versions(&self, id: &str) -> Result<Vec<VersionView>, DeployError> {
        let rows = self.store.versions(id).await?;
        let entry = self.runtime.registry().entry(id);
        let live = self.live_of(id);
        Ok(rows
            .into_iter()
            .map(|mut row| {
                let running = entry.as_ref().and_then(|e| {
                    if Some(row.seq) == live.current {
                        Some(e.current.clone())
                    } else if Some(row.seq) == live.canary {
                        e.canary.as_ref().map(|c| c.plugin.clone())
                    } else {
                        None
                    }
                });
                if let Some(p) = &running {
                    row.runs = p.outcomes.runs();
                    row.failures = p.outcomes.faults();
                }
                VersionView {
                    live: running.is_some(),
                    row,
                }
            })
            .collect())
    }

    async fn view(&self, id: &str, seq: i64) -> Result<VersionView, DeployError> {
        self.versions(id)
            .await?
            .into_iter()
            .find(|v| v.row.seq == seq)
            .ok_or_else(|| DeployError::new("VERSION_NOT_FOUND", format!("{id:?}: version gone")))
    }

    /// Called after every run of a plugin: a version on probation whose own
    /// failures pass its threshold is rolled back, once.
    pub fn after_run(&self, plugin: &Arc<Plugin>) {
        let verdict = {
            let mut probation = self.probation.lock().unwrap();
            let Some(p) = probation.get(plugin.id()) else {
                return;
            };
            if !std::ptr::eq(p.plugin.as_ptr(), Arc::as_ptr(plugin)) {
                return;
            }
            let runs = plugin.outcomes.runs();
            let faults = plugin.outcomes.faults();
            let allowed = p.max_failure_rate * f64::from(p.runs);
            let verdict = if faults as f64 > allowed {
                Some((p.seq, runs, faults))
            } else if runs >= u64::from(p.runs) {
                probation.remove(plugin.id());
                None
            } else {
                return;
            };
            if verdict.is_some() {
                probation.remove(plugin.id());
            }
            verdict
        };
        let Some((seq, runs, faults)) = verdict else {
            return;
        };
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let id = plugin.id().to_string();
        let reason = format!(
            "automatic rollback: {faults} of its first {runs} runs failed through the plugin's own fault (trap, timeout, memory limit or invalid output)"
        );
        tokio::spawn(async move {
            let _change = this.changes.lock().await;
            let live = this.live_of(&id);
            // Only if that version is still live (an operator may have acted).
            if live.canary != Some(seq) && live.current != Some(seq) {
                return;
            }
            if let Err(e) = this.rollback_locked(&id, None, &reason).await {
                tracing::error!(plugin = %id, error = %e, "automatic rollback failed");
            }
        });
    }

    /// Puts a newly live version on probation.
    fn watch(&self, plugin: &Arc<Plugin>, seq: i64) {
        let overrides = &plugin.manifest.rollout;
        let runs = overrides
            .probation_runs
            .unwrap_or(self.settings.probation_runs);
        if runs == 0 {
            return;
        }
        self.probation.lock().unwrap().insert(
            plugin.id().to_string(),
            Probation {
                seq,
                plugin: Arc::downgrade(plugin),
                runs,
                max_failure_rate: overrides
                    .max_failure_rate
                    .unwrap_or(self.settings.max_failure_rate),
            },
        );
    }

    fn live_of(&self, id: &str) -> Live {
        self.live
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    fn set_live(&self, id: &str, change: impl FnOnce(&mut Live)) {
        change(self.live.lock().unwrap().entry(id.to_string()).or_default());
    }

    async fn retire(
        &self,
        id: &str,
        seq: i64,
        status: &str,
        reason: Option<String>,
    ) -> Result<(), DeployError> {
        self.retire_with(id, seq, status, reason, None).await
    }

    /// Records that a version left service, with the counts it reached.
    async fn retire_with(
        &self,
        _id: &str,
        seq: i64,
        status: &str,
        reason: Option<String>,
        plugin: Option<&Plugin>,
    ) -> Result<(), DeployError> {
        let counts = plugin.map(|p| (p.outcomes.runs(), p.outcomes.faults()));
        self.store
            .set_version_status(seq, status, counts, reason)
            .await?;
        Ok(())
    }

    /// Keeps the configured number of versions; deletes components no
    /// version refers to any more.
    async fn prune(&self, id: &str) {
        match self
            .store
            .prune_versions(id, self.settings.keep_versions)
            .await
        {
            Ok(orphans) => {
                for digest in orphans {
                    let _ = tokio::fs::remove_file(self.component_path(&digest)).await;
                }
            }
            Err(e) => tracing::warn!(plugin = %id, error = %e, "old versions not pruned"),
        }
    }
}

/// Writes a content-addressed file once, atomically (temporary file, fsync,
/// rename): an existing file of that name already has these bytes.
async fn write_once(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Ok(());
    }
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use bsm_runtime::atomic_file::{Durability, write};
        write(&path, &bytes, Durability::SyncFile)
            .map_err(|e| format!("cannot store {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("the writer task failed: {e}"))?
}
