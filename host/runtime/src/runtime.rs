//! The plugin runtime: one engine, one linker with every host capability,
//! the plugin registry, and the code that runs a plugin inside its budget
//! and names whatever went wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::api::{
    self, ActionRequest, AgentOutput, AgentRequest, AgentRun, Contribution, DeliveryFailure,
    HandlerRun, StepRequest, StepRun,
};
use crate::artifact_cache::{self, ArtifactCache, CompilerProcess};
use crate::bindings::agent::{Agent, AgentPre};
use crate::bindings::handler::ActionHandlerPre;
use crate::bindings::step::StepPre;
use crate::bindings::types as wit;
use crate::bulkhead::{Bulkhead, Busy, Rejection};
use crate::capabilities::llm::LlmUsage;
use crate::capabilities::{self, Caller, Capabilities, RunInfo};
use crate::cpu_share::FairShare;
use crate::engine::{self, EpochTicker, PoolSettings};
use crate::error::LlmFailure;
use crate::error::{LoadError, LoadStage, RunError};
use crate::guest_pool::GuestPool;
use crate::limits::{MemoryLimitExceeded, RunLimits};
use crate::manifest::Budget;
use crate::manifest::{Manifest, PluginKind};
use crate::output_capture::panic_message;
use crate::plugin::{Described, Exports, Plugin};
use crate::registry::Registry;
use crate::run_state::RunState;
use bsm_cache::{CacheSettings, LoadingCache, StatsSnapshot};

/// Extra time the host waits beyond a plugin's own deadline before it stops
/// waiting on a run that is blocked in a host call (the epoch deadline only
/// interrupts guest code).
const HOST_GRACE: Duration = Duration::from_millis(50);

/// How a [`Runtime`] is set up.
#[derive(Clone, Default)]
pub struct RuntimeOptions {
    /// Directory for compiled components; `None` compiles on every load.
    pub artifact_dir: Option<PathBuf>,
    /// Compiles missing artifacts in a process of its own (with a trusted
    /// `artifact_dir`); `None` compiles in-process.
    pub compiler: Option<CompilerProcess>,
    pub pool: PoolSettings,
    pub capabilities: Capabilities,
    /// TTLs and sizes of the host's caches.
    pub cache: CacheSettings,
}

/// Compiled components kept in memory, keyed by digest.
const COMPONENT_CACHE_ENTRIES: u64 = 256;

/// The plugin runtime. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RunState>,
    capabilities: Capabilities,
    artifacts: ArtifactCache,
    registry: Registry,
    manifests: LoadingCache<PathBuf, Arc<Manifest>>,
    components: LoadingCache<String, Component>,
    /// One bulkhead per plugin id, shared by its versions.
    bulkheads: std::sync::Mutex<std::collections::HashMap<String, Arc<Bulkhead>>>,
    /// Places in the instance pool: a run waits for one rather than fail.
    instances: Arc<tokio::sync::Semaphore>,
    pool_slots: u32,
    guests: GuestPool,
    ticker: EpochTicker,
}

/// One guest call on a run's store, boxed so it can move to the guest pool.
type GuestCall<T> = Box<
    dyn for<'a> FnOnce(
            &'a mut Store<RunState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<T>> + Send + 'a>,
        > + Send,
>;

/// Plugins loaded from a directory, and the files that failed.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<Arc<Plugin>>,
    pub failed: Vec<LoadError>,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let engine = engine::build_engine(&options.pool)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        capabilities::link(&mut linker)?;
        Ok(Self {
            ticker: EpochTicker::start(&engine),
            engine,
            linker,
            capabilities: options.capabilities,
            artifacts: ArtifactCache::new(options.artifact_dir)
                .with_compiler(options.compiler, &options.pool),
            registry: Registry::default(),
            manifests: LoadingCache::new(
                "manifests",
                options.cache.manifests.max_entries,
                Some(options.cache.manifests.ttl()),
            ),
            components: LoadingCache::new("components", COMPONENT_CACHE_ENTRIES, None),
            bulkheads: Default::default(),
            instances: Arc::new(tokio::sync::Semaphore::new(
                options.pool.max_instances as usize,
            )),
            pool_slots: options.pool.max_instances,
            guests: GuestPool::new(options.pool.guest_threads)?,
        })
    }

    /// What the instance pool cannot hold at once, in words for start-up:
    /// each plugin whose `max-concurrent` alone exceeds the pool, and the
    /// loaded plugins' total when it does. Runs beyond the pool wait for a
    /// place within their queue wait, then are refused as busy: never a
    /// start failure. Empty when every budget fits.
    pub fn pool_pressure(&self) -> Vec<String> {
        let slots = self.pool_slots;
        let plugins = self.registry.list();
        let mut lines: Vec<String> = plugins
            .iter()
            .filter(|p| p.manifest.budget.max_concurrent > slots)
            .map(|p| {
                format!(
                    "plugin {:?}: budget.max-concurrent {} exceeds the instance pool's {slots} places; runs beyond {slots} wait up to its max-queue-wait-ms ({} ms) for a place, then are refused as PLUGIN_BUSY",
                    p.id(),
                    p.manifest.budget.max_concurrent,
                    p.manifest.budget.max_queue_wait_ms
                )
            })
            .collect();
        let total: u64 = plugins
            .iter()
            .map(|p| u64::from(p.manifest.budget.max_concurrent))
            .sum();
        if total > u64::from(slots) {
            lines.push(format!(
                "the {} loaded plugins may run {total} at once together, the instance pool holds {slots}: when several are at their limits, runs wait for a place (each within its max-queue-wait-ms), then are refused as PLUGIN_BUSY",
                plugins.len()
            ));
        }
        lines
    }

    /// The threads guest code runs on, and their fair CPU turns.
    pub fn guest_pool(&self) -> &GuestPool {
        &self.guests
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker holding every host capability; for embedders that
    /// instantiate components themselves, and for measuring the bare floor.
    pub fn linker(&self) -> &Linker<RunState> {
        &self.linker
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The capabilities every run gets (e.g. to read cache statistics).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Counters of the host's caches, by name.
    pub fn cache_stats(&self) -> Vec<(&'static str, StatsSnapshot)> {
        vec![
            ("manifests", self.manifests.stats()),
            ("components", self.components.stats()),
            ("plugin", self.capabilities.cache.stats()),
        ]
    }

    /// Empties one cache by name, or all of them with `None`. Returns false
    /// for an unknown name.
    pub fn clear_cache(&self, name: Option<&str>) -> bool {
        let all = name.is_none();
        let wants = |n: &str| all || name == Some(n);
        let mut known = all;
        if wants("manifests") {
            self.manifests.invalidate_all();
            known = true;
        }
        if wants("components") {
            self.components.invalidate_all();
            known = true;
        }
        if wants("plugin") {
            self.capabilities.cache.clear();
            known = true;
        }
        known
    }

    /// Forgets a cached manifest so the next load reads the file again.
    pub async fn invalidate_manifest(&self, path: &Path) {
        self.manifests.invalidate(&path.to_path_buf()).await;
    }

    /// Loads every plugin of `dir` (each `<id>.toml` with its component) into
    /// the registry. A broken plugin is reported and skipped; it never stops
    /// the others from loading.
    pub async fn load_dir(&self, dir: &Path) -> Result<LoadReport, LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            LoadError::new(
                dir.display(),
                format!("cannot read the plugins directory: {e}"),
            )
        })?;
        let mut manifests: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        manifests.sort();
        let mut report = LoadReport::default();
        for manifest in manifests {
            match self.load_plugin(&manifest).await {
                Ok(plugin) => {
                    self.registry.install(plugin.clone());
                    report.loaded.push(plugin);
                }
                Err(e) => report.failed.push(e),
            }
        }
        Ok(report)
    }

    /// Loads one plugin from its manifest without installing it: parses the
    /// manifest, compiles (or loads from the artifact cache) the component,
    /// checks it exports the world its manifest names, and calls `describe()`.
    pub async fn load_plugin(&self, manifest_path: &Path) -> Result<Arc<Plugin>, LoadError> {
        let manifest = self
            .manifests
            .get_or_load(manifest_path.to_path_buf(), || read_manifest(manifest_path))
            .await
            .map_err(|e: Arc<LoadError>| LoadError::clone(&e))?;
        let manifest = Manifest::clone(&manifest);
        let wasm_name = manifest
            .wasm
            .clone()
            .unwrap_or_else(|| format!("{}.wasm", manifest.id));
        let wasm_path = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(wasm_name);
        let bytes = tokio::fs::read(&wasm_path).await.map_err(|e| {
            LoadError::new(
                wasm_path.display(),
                format!("cannot read the component: {e}"),
            )
        })?;
        self.build_plugin(manifest, bytes, wasm_path).await
    }

    /// Builds a plugin from a manifest and component bytes (used for files
    /// and, later, for uploads).
    pub async fn build_plugin(
        &self,
        manifest: Manifest,
        bytes: Vec<u8>,
        source: PathBuf,
    ) -> Result<Arc<Plugin>, LoadError> {
        let origin = source.display().to_string();
        manifest.validate().map_err(|m| {
            LoadError::at(
                LoadStage::Manifest,
                &origin,
                format!("manifest of {:?}: {m}", manifest.id),
            )
        })?;
        crate::header::check_header(&bytes)
            .map_err(|m| LoadError::at(LoadStage::Component, &origin, m))?;
        let digest = artifact_cache::digest(&bytes);
        // Single-flight: concurrent loads of the same bytes compile once.
        let component = self
            .components
            .get_or_load(digest.clone(), || {
                let engine = self.engine.clone();
                let artifacts = self.artifacts.clone();
                let digest = digest.clone();
                let origin = origin.clone();
                async move {
                    // A thread of its own that ends with the compilation:
                    // the compiler's buffers go back with it instead of
                    // staying in a pooled blocking thread's allocator heap.
                    let (done, compiled) = tokio::sync::oneshot::channel();
                    std::thread::Builder::new()
                        .name("bsm-compile".into())
                        .spawn(move || {
                            let _ = done.send(artifacts.load(&engine, &bytes, &digest));
                        })
                        .map_err(|e| {
                            LoadError::new(&origin, format!("cannot start compiling: {e}"))
                        })?;
                    compiled
                        .await
                        .map_err(|e| {
                            LoadError::new(&origin, format!("compilation task failed: {e}"))
                        })?
                        .map_err(|e| {
                            LoadError::at(
                                LoadStage::Component,
                                &origin,
                                format!("not a valid component: {e:#}"),
                            )
                        })
                }
            })
            .await
            .map_err(|e: Arc<LoadError>| LoadError::clone(&e))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if let Some((interface, import)) = manifest
            .capabilities
            .first_ungranted(imports.iter().map(String::as_str))
        {
            return Err(LoadError::at(
                LoadStage::Capabilities,
                &origin,
                format!(
                    "plugin {:?} imports {import}, which its manifest does not grant: add a [capabilities.{interface}] table to the manifest",
                    manifest.id
                ),
            ));
        }
        let exports = self
            .pre_instantiate(&component, manifest.kind)
            .map_err(|m| LoadError::at(LoadStage::World, &origin, m))?;
        let budget = &manifest.budget;
        let id: Arc<str> = Arc::from(manifest.id.as_str());
        let mut plugin = Plugin {
            digest,
            described: Described {
                id: manifest.id.clone(),
                name: manifest.id.clone(),
                version: manifest.version.clone(),
                description: manifest.description.clone(),
                actions: Vec::new(),
            },
            source,
            id,
            exports,
            bulkhead: self.bulkhead_of(&manifest.id, budget),
            config: Arc::new(manifest.config_pairs()),
            outcomes: Default::default(),
            allowed_actions: manifest
                .allowed_actions
                .iter()
                .cloned()
                .collect::<HashSet<_>>(),
            manifest,
        };
        plugin.described = self.describe(&plugin).await.map_err(|e| {
            LoadError::at(
                LoadStage::Describe,
                &origin,
                format!("describe() failed: {e}"),
            )
        })?;
        if plugin.described.id != plugin.manifest.id {
            tracing::warn!(
                manifest_id = %plugin.manifest.id,
                described_id = %plugin.described.id,
                "plugin describes itself under another id; the manifest's id is used"
            );
        }
        Ok(Arc::new(plugin))
    }

    /// Links the component against the host and checks its exports match the
    /// world of `kind`.
    fn pre_instantiate(&self, component: &Component, kind: PluginKind) -> Result<Exports, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            format!("the component imports something this host does not provide: {e:#}")
        })?;
        match kind {
            PluginKind::Agent => AgentPre::new(pre)
                .map(Exports::Agent)
                .map_err(|e| format!("the manifest says `kind = \"agent\"` but the component does not export the agent world: {e:#}")),
            PluginKind::Step => StepPre::new(pre)
                .map(Exports::Step)
                .map_err(|e| format!("the manifest says `kind = \"step\"` but the component does not export the step world: {e:#}")),
            PluginKind::Handler => ActionHandlerPre::new(pre)
                .map(Exports::Handler)
                .map_err(|e| format!("the manifest says `kind = \"handler\"` but the component does not export the action-handler world: {e:#}")),
        }
    }

    async fn describe(&self, plugin: &Plugin) -> Result<Described, RunError> {
        let correlation_id = format!("load-{}", plugin.id());
        let call: GuestCall<Described> = match &plugin.exports {
            Exports::Agent(pre) => {
                let pre = pre.clone();
                Box::new(move |store| {
                    Box::pin(async move {
                        let agent = pre.instantiate_async(&mut *store).await?;
                        agent.call_describe(&mut *store).await.map(Described::from)
                    })
                })
            }
            Exports::Step(pre) => {
                let pre = pre.clone();
                Box::new(move |store| {
                    Box::pin(async move {
                        let step = pre.instantiate_async(&mut *store).await?;
                        step.call_describe(&mut *store).await.map(Described::from)
                    })
                })
            }
            Exports::Handler(pre) => {
                let pre = pre.clone();
                Box::new(move |store| {
                    Box::pin(async move {
                        let handler = pre.instantiate_async(&mut *store).await?;
                        handler
                            .call_describe(&mut *store)
                            .await
                            .map(Described::from)
                    })
                })
            }
        };
        self.sandboxed(plugin, &correlation_id, call).await.0
    }

    /// The bulkhead every version of `id` shares (made with this budget
    /// when it is the first version; resized when a version is installed).
    fn bulkhead_of(&self, id: &str, budget: &crate::manifest::Budget) -> Arc<Bulkhead> {
        self.bulkheads
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Bulkhead::new(
                    budget.max_concurrent as usize,
                    budget.max_queued as usize,
                    budget.max_queue_wait(),
                ))
            })
            .clone()
    }

    fn plugin_of_kind(&self, id: &str, kind: PluginKind) -> Result<Arc<Plugin>, RunError> {
        let plugin = self
            .registry
            .get(id)
            .ok_or_else(|| RunError::PluginNotFound { id: id.to_string() })?;
        if plugin.kind() != kind {
            return Err(RunError::WrongPluginKind {
                id: id.to_string(),
                expected: kind,
                actual: plugin.kind(),
            });
        }
        Ok(plugin)
    }

    /// Runs an agent on one input, within the plugin's budget.
    pub async fn run_agent(&self, id: &str, request: AgentRequest) -> Result<AgentRun, RunError> {
        let plugin = self.plugin_of_kind(id, PluginKind::Agent)?;
        self.run_agent_plugin(&plugin, request).await
    }

    /// Runs a specific plugin version (e.g. one held since before a swap).
    pub async fn run_agent_plugin(
        &self,
        plugin: &Arc<Plugin>,
        request: AgentRequest,
    ) -> Result<AgentRun, RunError> {
        let result = self.execute_agent(plugin, request).await;
        record_outcome(plugin, &result);
        result
    }

    async fn execute_agent(
        &self,
        plugin: &Arc<Plugin>,
        request: AgentRequest,
    ) -> Result<AgentRun, RunError> {
        let Exports::Agent(pre) = &plugin.exports else {
            return Err(RunError::WrongPluginKind {
                id: plugin.id().to_string(),
                expected: PluginKind::Agent,
                actual: plugin.kind(),
            });
        };
        let started = Instant::now();
        let input = wit::AgentInput {
            input: request.input,
            payload: request.payload.to_string(),
            context: (&request.context).into(),
        };
        let _slot = plugin
            .bulkhead
            .acquire()
            .await
            .map_err(|b| busy(plugin, b))?;
        let pre = pre.clone();
        let (result, usage) = self
            .sandboxed(
                plugin,
                &request.context.correlation_id,
                Box::new(move |store| {
                    Box::pin(async move {
                        let agent: Agent = pre.instantiate_async(&mut *store).await?;
                        agent.call_run(&mut *store, &input).await
                    })
                }),
            )
            .await;
        let output = result?.map_err(|e| RunError::PluginFailed {
            plugin: plugin.id().to_string(),
            failure: e.into(),
            llm_error: usage.last_error.as_ref().map(LlmFailure::from),
        })?;
        let output = self.validate_agent_output(plugin, output)?;
        Ok(AgentRun {
            usage,
            plugin_id: plugin.id().to_string(),
            plugin_version: plugin.manifest.version.clone(),
            correlation_id: request.context.correlation_id,
            output,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn validate_agent_output(
        &self,
        plugin: &Plugin,
        output: wit::AgentOutput,
    ) -> Result<AgentOutput, RunError> {
        let bytes = api::wit_output_bytes(&output) as u64;
        let limit = plugin.manifest.budget.max_output_bytes;
        if bytes > limit {
            return Err(RunError::PluginOutputTooLarge {
                plugin: plugin.id().to_string(),
                bytes,
                limit_bytes: limit,
            });
        }
        if let Some(action) = output
            .actions
            .iter()
            .find(|a| !plugin.allowed_actions.contains(&a.name))
        {
            return Err(RunError::ActionNotAllowed {
                plugin: plugin.id().to_string(),
                action: action.name.clone(),
            });
        }
        AgentOutput::from_wit(output).map_err(|message| RunError::PluginInvalidOutput {
            plugin: plugin.id().to_string(),
            message,
        })
    }

    /// Runs an orchestration step over a pipeline state, within its budget.
    pub async fn run_step(&self, id: &str, request: StepRequest) -> Result<StepRun, RunError> {
        let plugin = self.plugin_of_kind(id, PluginKind::Step)?;
        self.run_step_plugin(&plugin, request).await
    }

    /// Runs a specific step version (e.g. one held since before a swap).
    pub async fn run_step_plugin(
        &self,
        plugin: &Arc<Plugin>,
        request: StepRequest,
    ) -> Result<StepRun, RunError> {
        let result = self.execute_step(plugin, request).await;
        record_outcome(plugin, &result);
        result
    }

    async fn execute_step(
        &self,
        plugin: &Arc<Plugin>,
        request: StepRequest,
    ) -> Result<StepRun, RunError> {
        let Exports::Step(pre) = &plugin.exports else {
            return Err(RunError::WrongPluginKind {
                id: plugin.id().to_string(),
                expected: PluginKind::Step,
                actual: plugin.kind(),
            });
        };
        let started = Instant::now();
        let state = wit::PipelineState {
            event: request.event,
            payload: request.payload.to_string(),
            context: (&request.context).into(),
            results: request.results.iter().map(wit::AgentResult::from).collect(),
        };
        let _slot = plugin
            .bulkhead
            .acquire()
            .await
            .map_err(|b| busy(plugin, b))?;
        let pre = pre.clone();
        let (result, usage) = self
            .sandboxed(
                plugin,
                &request.context.correlation_id,
                Box::new(move |store| {
                    Box::pin(async move {
                        let step = pre.instantiate_async(&mut *store).await?;
                        step.call_run(&mut *store, &state).await
                    })
                }),
            )
            .await;
        let contribution = result?.map_err(|e| RunError::PluginFailed {
            plugin: plugin.id().to_string(),
            failure: e.into(),
            llm_error: usage.last_error.as_ref().map(LlmFailure::from),
        })?;
        if let wit::Contribution::Decision(d) = &contribution
            && let Some(action) = d
                .actions
                .iter()
                .find(|a| !plugin.allowed_actions.contains(&a.name))
        {
            return Err(RunError::ActionNotAllowed {
                plugin: plugin.id().to_string(),
                action: action.name.clone(),
            });
        }
        let contribution = Contribution::from_wit(contribution).map_err(|message| {
            RunError::PluginInvalidOutput {
                plugin: plugin.id().to_string(),
                message,
            }
        })?;
        Ok(StepRun {
            plugin_id: plugin.id().to_string(),
            plugin_version: plugin.manifest.version.clone(),
            correlation_id: request.context.correlation_id,
            contribution,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Hands an action to an action-handler plugin, within its budget. A
    /// trap, timeout or busy handler is an error of the run (the outbox
    /// retries it); the handler's own answer is in [`HandlerRun::outcome`].
    pub async fn run_handler(
        &self,
        id: &str,
        request: ActionRequest,
    ) -> Result<HandlerRun, RunError> {
        let plugin = self.plugin_of_kind(id, PluginKind::Handler)?;
        let result = self.execute_handler(&plugin, request).await;
        record_outcome(&plugin, &result);
        result
    }

    async fn execute_handler(
        &self,
        plugin: &Arc<Plugin>,
        request: ActionRequest,
    ) -> Result<HandlerRun, RunError> {
        let Exports::Handler(pre) = &plugin.exports else {
            return Err(RunError::WrongPluginKind {
                id: plugin.id().to_string(),
                expected: PluginKind::Handler,
                actual: plugin.kind(),
            });
        };
        let started = Instant::now();
        let correlation_id = request.correlation_id.clone();
        let wit_request = wit::ActionRequest {
            id: request.id,
            name: request.name,
            args: request.args.to_string(),
            idempotency_key: request.idempotency_key,
            attempt: request.attempt,
            source_plugin: request.source_plugin,
            job_id: request.job_id,
            event: request.event,
            payload: request.payload.to_string(),
            decision: request.decision,
            report: request.report,
            correlation_id: request.correlation_id,
        };
        let _slot = plugin
            .bulkhead
            .acquire()
            .await
            .map_err(|b| busy(plugin, b))?;
        let pre = pre.clone();
        let (result, _usage) = self
            .sandboxed(
                plugin,
                &correlation_id,
                Box::new(move |store| {
                    Box::pin(async move {
                        let handler = pre.instantiate_async(&mut *store).await?;
                        handler.call_handle(&mut *store, &wit_request).await
                    })
                }),
            )
            .await;
        let outcome = result?.map_err(|e| match e {
            wit::DeliveryError::Retry(m) => DeliveryFailure::Retry(m),
            wit::DeliveryError::Permanent(m) => DeliveryFailure::Permanent(m),
        });
        Ok(HandlerRun {
            plugin_id: plugin.id().to_string(),
            plugin_version: plugin.manifest.version.clone(),
            outcome,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// A fresh store for one run: its own limits, deadline and capabilities.
    fn new_store(&self, plugin: &Plugin, correlation_id: &str) -> Store<RunState> {
        let budget = &plugin.manifest.budget;
        let caller = Caller {
            plugin_id: plugin.id.clone(),
            correlation_id: Arc::from(correlation_id),
        };
        let caps = self.capabilities.for_run(&RunInfo {
            caller,
            manifest: &plugin.manifest,
            config: &plugin.config,
            tape: self.capabilities.tape.clone(),
        });
        let deadline = Instant::now() + budget.timeout();
        let mut state = RunState::new(RunLimits::new(budget.memory_bytes()), deadline, caps);
        state.cpu_limit_nanos = budget.cpu_ms.map(|ms| ms.saturating_mul(1_000_000));
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // At every epoch tick: past the deadline or over its CPU time,
        // interrupt the guest; otherwise, once this poll has computed for a
        // slice, yield, which gives the run's CPU turn to whoever waits for
        // one (see `cpu_share`) and moves a long computation to the pool.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            if Instant::now() >= data.deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            if data
                .cpu_limit_nanos
                .is_some_and(|limit| data.cpu.used_nanos() > limit)
            {
                data.cpu_exceeded = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            if data.cpu.current_poll() < crate::cpu_share::MIN_SLICE {
                // Back from a host call moments ago: not a tick of computing.
                return Ok(UpdateDeadline::Continue(1));
            }
            data.used_a_tick
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // tokio's yield_now, not a plain self-wake: a self-woken task
            // goes to the worker's LIFO slot and runs again at once, ahead
            // of runs spawned meanwhile; yield_now puts it behind them.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    /// Runs `call` in a fresh store (on the caller's thread until it has
    /// computed for a whole epoch tick, then on the guest pool), under the
    /// plugin's deadline and fair CPU turns, and turns every way it can fail into a
    /// named [`RunError`]. Waits for a place in the instance pool first.
    async fn sandboxed<T: Send + 'static>(
        &self,
        plugin: &Plugin,
        correlation_id: &str,
        call: GuestCall<T>,
    ) -> (Result<T, RunError>, LlmUsage) {
        let budget = plugin.manifest.budget.clone();
        let id = plugin.id.clone();
        let wait = budget.max_queue_wait();
        let instance =
            match tokio::time::timeout(wait, self.instances.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    return (
                        Err(RunError::PluginBusy {
                            plugin: id.to_string(),
                            reason: "every instance of the host's pool is in use".into(),
                            retry_after_ms: wait.as_millis().max(50) as u64,
                        }),
                        LlmUsage::default(),
                    );
                }
            };
        let mut store = self.new_store(plugin, correlation_id);
        let meter = store.data().cpu.clone();
        let used_a_tick = store.data().used_a_tick.clone();
        let scheduler = self.guests.scheduler().clone();
        let ticker = self.ticker.handle();
        let task = async move {
            let _instance = instance;
            let call = ticker.while_polled(call(&mut store));
            let call = FairShare::new(scheduler, id.clone(), meter, call);
            let outcome = tokio::time::timeout(budget.timeout() + HOST_GRACE, call).await;
            let usage = store.data().caps.llm.usage();
            let result = match outcome {
                Ok(Ok(value)) => Ok(value),
                // Guest code is interrupted by the epoch deadline; only a run
                // blocked in a host call outlives it into the grace period.
                Err(_elapsed) => Err(RunError::PluginTimeout {
                    plugin: id.to_string(),
                    timeout_ms: budget.timeout_ms,
                    in_host_call: true,
                }),
                Ok(Err(error)) => Err(classify_failure(&id, &budget, &store, error)),
            };
            (result, usage)
        };
        match self.guests.run_from_here(task, used_a_tick).await {
            Ok(outcome) => outcome,
            Err(message) => (
                Err(RunError::PluginStartFailed {
                    plugin: plugin.id().to_string(),
                    message,
                }),
                LlmUsage::default(),
            ),
        }
    }
}

async fn read_manifest(path: &Path) -> Result<Arc<Manifest>, LoadError> {
    let origin = path.display();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| LoadError::new(&origin, format!("cannot read the manifest: {e}")))?;
    Manifest::from_toml(&text, path)
        .map(Arc::new)
        .map_err(|m| LoadError::at(LoadStage::Manifest, &origin, m))
}

/// Names a failed call: deadline, memory cap, guest trap (with the panic
/// message when the guest printed one) or failure to start.
fn classify_failure(
    id: &str,
    budget: &Budget,
    store: &Store<RunState>,
    error: wasmtime::Error,
) -> RunError {
    let id = id.to_string();
    let memory_hit = store.data().limits.memory_exceeded;
    if error.downcast_ref::<MemoryLimitExceeded>().is_some() || memory_hit.is_some() {
        return RunError::PluginMemoryLimit {
            plugin: id,
            limit_bytes: budget.memory_bytes() as u64,
            requested_bytes: memory_hit.unwrap_or_default() as u64,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) if store.data().cpu_exceeded => RunError::PluginCpuLimit {
            plugin: id,
            cpu_ms: budget.cpu_ms.unwrap_or_default(),
        },
        Some(Trap::Interrupt) => RunError::PluginTimeout {
            plugin: id,
            timeout_ms: budget.timeout_ms,
            in_host_call: false,
        },
        Some(trap) => {
            let stderr = store.data().stderr.text();
            let message = panic_message(&stderr).unwrap_or_else(|| format!("{trap} ({error})"));
            RunError::PluginTrap {
                plugin: id,
                message,
            }
        }
        None => RunError::PluginStartFailed {
            plugin: id,
            message: format!("{error:#}"),
        },
    }
}

/// Counts a run that reached the plugin in its version's outcomes.
fn record_outcome<T>(plugin: &Plugin, result: &Result<T, RunError>) {
    match result {
        Err(RunError::PluginBusy { .. } | RunError::WrongPluginKind { .. }) => {}
        Ok(_) => plugin.outcomes.record(false),
        Err(e) => plugin.outcomes.record(e.is_plugin_fault()),
    }
}

fn busy(plugin: &Plugin, busy: Busy) -> RunError {
    RunError::PluginBusy {
        plugin: plugin.id().to_string(),
        reason: match busy.reason {
            Rejection::QueueFull => "all run slots and queue places are taken".into(),
            Rejection::QueueTimeout => "no run slot freed up within the queue wait".into(),
        },
        retry_after_ms: busy.retry_after.as_millis() as u64,
    }
}
