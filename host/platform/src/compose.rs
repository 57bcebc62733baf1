//! The composition root: the one place that builds the host from settings.
//! `bsm serve` and every CLI command that runs something go through
//! [`Platform::build`], so they load the same plugins, the same BSM agents
//! under the same governance, and write to the same database and reports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::access::ApiKeys;
use crate::agent_reload::AgentReload;
use crate::bsm::agents::manifest_for;
use crate::bsm::governance::KNOWN_CONTEXTS;
use crate::bsm::knowledge::{BsmKnowledge, KnowledgeBinding};
use crate::bsm::{BsmLayout, Governance};
use crate::deploy::Deployer;
use crate::dispatch::{Deliverer, Dispatch};
use crate::governed::Governed;
use crate::orchestration::{Orchestrator, Pipelines};
use crate::outbound::OutboundHttp;
use crate::outbox::Outbox;
use crate::platform::{Activity, Platform};
use crate::reports::ReportStore;
use crate::retention::Retention;
use crate::secrets::Secrets;
use crate::settings::{EmbedderChoice, HostSettings};
use crate::signing::TrustedKeys;
use crate::store::Store;
use crate::watch::{watch_dir, watch_plugins_dir};
use bsm_cache::PluginCache;
use bsm_knowledge::{Embedder, Knowledge};
use bsm_llm::LlmClient;
use bsm_runtime::artifact_cache::CompilerProcess;
use bsm_runtime::capabilities::Capabilities;
use bsm_runtime::capabilities::llm::{LlmShared, NOT_CONFIGURED};
use bsm_runtime::tape::Tape;
use bsm_runtime::{Runtime, RuntimeOptions};

/// The agent set in the original BSM layout the platform serves.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentSet {
    /// No BSM agents: only the plugins directory.
    None,
    /// The set shipped in this repository (`examples/bsm`): served when
    /// nothing else is configured. Skipped with a log line when the plugins
    /// directory has no `prompt-agent` to run it.
    Shipped(PathBuf),
    /// A directory the operator named: it must load (a missing
    /// `prompt-agent` or an unreadable index is an error).
    Dir(PathBuf),
}

/// Which plugins of the plugins directory to load.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSelection {
    /// Every plugin (the server, jobs).
    All,
    /// Only these ids, plus `prompt-agent` when one of them is a BSM agent
    /// (a CLI run of one agent: a broken plugin elsewhere stays out of the way).
    Only(Vec<String>),
}

/// Everything the platform is built from.
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    /// SQLite database (`bsm.db`), reports, compiled plugins.
    pub data_dir: PathBuf,
    /// `<id>.toml` manifests beside their components.
    pub plugins_dir: PathBuf,
    pub plugins: PluginSelection,
    pub agents: AgentSet,
    pub settings: HostSettings,
    /// Install what changes in the plugins directory while running (the
    /// server; `[plugins] watch` can turn it off).
    pub watch: bool,
    /// Run the server's background work: retention by `[retention]` and
    /// the outbox dispatcher (one-off CLI runs leave both to the server).
    pub background: bool,
    /// Records every host call of the runs, or answers them from a
    /// recording (`bsm run --record/--replay`); `None`: live.
    pub tape: Option<Arc<Tape>>,
    /// Compiles plugins missing from the artifact cache in a process of
    /// its own (`None`: in-process).
    pub compiler: Option<CompilerProcess>,
}

/// The plugin every BSM agent is an instance of.
const PROMPT_AGENT: &str = "prompt-agent";

impl Platform {
    /// Builds the platform: database, reports, LLM client, runtime with its
    /// capabilities, plugins, BSM agents under their governance (agents with
    /// violations quarantined, or a refusal in strict mode), knowledge,
    /// orchestration. Errors say what to fix.
    pub async fn build(options: PlatformOptions) -> anyhow::Result<Platform> {
        let settings = &options.settings;
        let data_dir = &options.data_dir;
        let (store, interrupted) =
            Store::open(&data_dir.join("bsm.db")).map_err(|e| anyhow::anyhow!("{e}"))?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "jobs that were running when the host last stopped are marked interrupted"
            );
        }
        let reports_dir = settings
            .reports
            .dir
            .clone()
            .unwrap_or_else(|| data_dir.join("reports"));
        let reports = ReportStore::open_journaled(&reports_dir, Arc::new(store.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let llm = LlmClient::from_settings(&settings.llm)?.map(Arc::new);
        let knowledge = open_knowledge(&options.settings, data_dir, llm.as_ref()).await?;
        let secrets = Secrets::resolve(&settings.secrets)?;
        let mut capabilities = Capabilities {
            cache: Arc::new(PluginCache::new(settings.cache.plugin.clone())),
            reports: Some(reports.clone()),
            knowledge: Some(Arc::new(knowledge.clone())),
            http: Some(Arc::new(OutboundHttp::new(secrets)?)),
            tape: options.tape.clone(),
            ..Capabilities::default()
        };
        match &llm {
            Some(client) => capabilities.llm = LlmShared::new(client.clone()),
            None => tracing::info!("{NOT_CONFIGURED}"),
        }
        let runtime = Arc::new(Runtime::new(RuntimeOptions {
            artifact_dir: Some(data_dir.join("cache").join("components")),
            compiler: options.compiler.clone(),
            capabilities,
            cache: settings.cache.clone(),
            ..RuntimeOptions::default()
        })?);

        let trusted = TrustedKeys::parse(&settings.plugins.trusted_keys)?;
        let layout = read_layout(&options.agents)?;
        load_plugins(&runtime, &options, layout.as_ref()).await?;
        if trusted.required() {
            refuse_unsigned(&runtime, &trusted).await;
        }
        let layout = match layout {
            Some(_)
                if matches!(options.agents, AgentSet::Shipped(_))
                    && runtime.registry().get(PROMPT_AGENT).is_none() =>
            {
                tracing::info!(
                    "the plugins directory has no {PROMPT_AGENT}: the shipped BSM agents are not served"
                );
                None
            }
            layout => layout,
        };

        let allow_list = settings.governance.allow_list();
        let mut governance = Governance::default();
        let bsm_knowledge = layout.as_ref().and_then(|l| {
            l.knowledge_dir.clone().map(|dir| BsmKnowledge {
                knowledge: knowledge.clone(),
                dir,
                binding: KnowledgeBinding {
                    collection: settings.knowledge.bsm_collection.clone(),
                    top_k: settings.knowledge.top_k,
                },
            })
        });
        if let Some(k) = &bsm_knowledge {
            k.ingest_logged().await;
        }
        let binding = bsm_knowledge.as_ref().map(|k| k.binding.clone());
        if let Some(layout) = &layout {
            governance = Governance::assess(layout, &allow_list);
            if settings.governance.strict && !governance.violations().is_empty() {
                let list: Vec<String> = governance
                    .violations()
                    .iter()
                    .map(|v| format!("  - {v}"))
                    .collect();
                bail!(
                    "refusing to start (strict governance): the agent registry has {} violation(s):\n{}",
                    list.len(),
                    list.join("\n")
                );
            }
            for warning in &governance.warnings {
                tracing::warn!("{warning}");
            }
            for (agent, violations) in governance.quarantined() {
                let reasons: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                tracing::error!(agent = %agent, violations = ?reasons, "agent quarantined: not served until its violations are fixed");
            }
            install_agents(
                &runtime,
                layout,
                &governance,
                &options.plugins,
                binding.as_ref(),
            )
            .await?;
        }
        // Versions installed in a running host (and removals) survive a restart.
        let deployer = Deployer::new(
            runtime.clone(),
            store.clone(),
            data_dir.join("plugins"),
            settings.plugins.clone(),
            trusted.clone(),
        );
        if matches!(options.plugins, PluginSelection::All) {
            let restored = deployer
                .restore()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if restored > 0 {
                tracing::info!(restored, "installed plugin versions restored");
            }
        }
        for plugin in runtime.registry().list() {
            governance.insert_default(plugin.id(), KNOWN_CONTEXTS);
        }

        let served_agents: BTreeSet<String> = layout
            .as_ref()
            .map(|l| {
                l.agents
                    .iter()
                    .filter(|d| !governance.is_quarantined(&d.id))
                    .map(|d| d.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let api_keys = ApiKeys::new(store.clone());
        // This process delivers actions when it runs in the background.
        let routes = options.background.then(|| settings.actions.clone());
        let governed = Arc::new(Governed::new(
            runtime,
            governance,
            store,
            deployer.clone(),
            routes,
        ));
        let mut watches = Vec::new();
        if options.watch && settings.plugins.watch {
            match watch_plugins_dir(&options.plugins_dir, deployer) {
                Ok(watch) => watches.push(watch),
                Err(e) => {
                    tracing::warn!(dir = %options.plugins_dir.display(), error = %e, "the plugins directory is not watched; install versions through the API")
                }
            }
            if let Some(layout) = &layout {
                let reload = Arc::new(AgentReload::new(
                    layout.root.clone(),
                    allow_list.clone(),
                    governed.clone(),
                    served_agents,
                    bsm_knowledge.clone(),
                ));
                let watched = watch_dir(&layout.root, true, move |_| {
                    let reload = reload.clone();
                    async move { reload.reload_logged().await }
                });
                match watched {
                    Ok(watch) => watches.push(watch),
                    Err(e) => {
                        tracing::warn!(dir = %layout.root.display(), error = %e, "the BSM directory is not watched; restart to apply edits")
                    }
                }
            }
        }
        for line in governed.runtime().pool_pressure() {
            tracing::info!("{line}");
        }
        let outbox = Outbox::new(governed.store().clone());
        let dispatch = if options.background {
            Dispatch::start(Deliverer {
                outbox,
                store: governed.store().clone(),
                reports: reports.clone(),
                runtime: governed.runtime().clone(),
                settings: settings.actions.clone(),
            })
        } else {
            Dispatch::idle(outbox)
        };
        let retention = options.background.then(|| {
            let runtime = governed.runtime().clone();
            crate::retention::spawn(
                Retention {
                    store: governed.store().clone(),
                    settings: settings.retention.clone(),
                    reports_dir: reports.dir().to_path_buf(),
                    artifacts_dir: Some(data_dir.join("cache").join("components")),
                },
                move || {
                    runtime
                        .registry()
                        .list()
                        .iter()
                        .map(|p| p.digest.clone())
                        .collect()
                },
            )
        });
        let orchestrator = Orchestrator::new(
            governed.clone(),
            reports.clone(),
            Pipelines::with_overrides(&settings.pipelines),
            settings.jobs,
        );
        Ok(Platform {
            api_keys,
            dispatch,
            governed,
            orchestrator,
            reports,
            llm,
            knowledge,
            bsm_knowledge,
            _watches: watches,
            _retention: retention,
            activity: Activity {
                runs_ok: AtomicU64::new(0),
                runs_failed: AtomicU64::new(0),
                jobs_submitted: AtomicU64::new(0),
            },
            started_at: Instant::now(),
        })
    }
}

/// Opens the knowledge collections of `data_dir` with the configured
/// embedder, without the rest of the platform (`bsm knowledge ingest`).
pub async fn open_knowledge_only(
    settings: &HostSettings,
    data_dir: &std::path::Path,
) -> anyhow::Result<Knowledge> {
    let llm = LlmClient::from_settings(&settings.llm)?.map(Arc::new);
    open_knowledge(settings, data_dir, llm.as_ref()).await
}

/// Opens the knowledge collections with the configured embedder.
async fn open_knowledge(
    settings: &HostSettings,
    data_dir: &std::path::Path,
    llm: Option<&Arc<LlmClient>>,
) -> anyhow::Result<Knowledge> {
    let config = &settings.knowledge;
    let embedder = match (config.embedder, llm) {
        (EmbedderChoice::Builtin, _) => Embedder::builtin(),
        (EmbedderChoice::Provider, Some(client)) => {
            Embedder::provider(client.clone(), config.model.clone(), config.embed_batch)
        }
        (EmbedderChoice::Provider, None) => {
            bail!("[knowledge] embedder = \"provider\" needs an LLM provider: {NOT_CONFIGURED}")
        }
    };
    let dir = config
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("knowledge"));
    Knowledge::open(&dir, embedder, config.service_settings())
        .await
        .with_context(|| format!("cannot open the knowledge collections in {}", dir.display()))
}

/// Reads the configured layout; the shipped set is optional, a named one not.
fn read_layout(agents: &AgentSet) -> anyhow::Result<Option<BsmLayout>> {
    match agents {
        AgentSet::None => Ok(None),
        AgentSet::Shipped(dir) => match BsmLayout::load(dir) {
            Ok(layout) => Ok(Some(layout)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "the shipped BSM agents are not served");
                Ok(None)
            }
        },
        AgentSet::Dir(dir) => BsmLayout::load(dir)
            .map(Some)
            .with_context(|| format!("cannot load the BSM layout at {}", dir.display())),
    }
}

/// Loads the selected plugins of the plugins directory. A broken plugin is
/// logged and skipped; it never stops the others.
async fn load_plugins(
    runtime: &Runtime,
    options: &PlatformOptions,
    layout: Option<&BsmLayout>,
) -> anyhow::Result<()> {
    let dir = &options.plugins_dir;
    let ids = match &options.plugins {
        PluginSelection::All => {
            let report = runtime
                .load_dir(dir)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for failure in &report.failed {
                tracing::error!(error = %failure, "plugin not loaded");
            }
            return Ok(());
        }
        PluginSelection::Only(ids) => ids,
    };
    let needs_prompt_agent =
        layout.is_some_and(|l| ids.iter().any(|id| l.agents.iter().any(|a| &a.id == id)));
    let mut wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    if needs_prompt_agent {
        wanted.push(PROMPT_AGENT);
    }
    for id in wanted {
        let manifest = dir.join(format!("{id}.toml"));
        if !manifest.is_file() || runtime.registry().get(id).is_some() {
            continue;
        }
        let plugin = runtime.load_plugin(&manifest).await?;
        runtime.registry().install(plugin);
    }
    Ok(())
}

/// With trusted keys configured, unloads every plugin of the plugins
/// directory without a valid `<file>.sig` beside its component.
async fn refuse_unsigned(runtime: &Runtime, trusted: &TrustedKeys) {
    for plugin in runtime.registry().list() {
        let sig_path = format!("{}.sig", plugin.source.display());
        let signature = tokio::fs::read_to_string(&sig_path).await.ok();
        if let Err(e) = trusted.verify(&plugin.digest, signature.as_deref()) {
            tracing::error!(plugin = %plugin.id(), code = e.code, error = %e.message, "plugin not loaded: unsigned or badly signed");
            runtime.registry().remove(plugin.id());
        }
    }
}

/// Installs every governed (not quarantined) agent of the layout as a
/// `prompt-agent` instance: one compilation, one manifest each.
async fn install_agents(
    runtime: &Runtime,
    layout: &BsmLayout,
    governance: &Governance,
    selection: &PluginSelection,
    knowledge: Option<&KnowledgeBinding>,
) -> anyhow::Result<()> {
    let wanted = |id: &str| match selection {
        PluginSelection::All => true,
        PluginSelection::Only(ids) => ids.iter().any(|i| i == id),
    };
    let agents: Vec<_> = layout
        .agents
        .iter()
        .filter(|def| wanted(&def.id) && !governance.is_quarantined(&def.id))
        .collect();
    if agents.is_empty() {
        return Ok(());
    }
    let Some(prompt_agent) = runtime.registry().get(PROMPT_AGENT) else {
        bail!(
            "the BSM agents of {} need the {PROMPT_AGENT} plugin, which is not in the plugins directory",
            layout.root.display()
        );
    };
    let bytes = tokio::fs::read(&prompt_agent.source).await?;
    for def in agents {
        let plugin = runtime
            .build_plugin(
                manifest_for(def, knowledge),
                bytes.clone(),
                prompt_agent.source.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("agent {}: {e}", def.id))?;
        runtime.registry().install(plugin);
    }
    Ok(())
}
