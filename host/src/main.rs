//! `bsm`: run plugins, list them and check components from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bsm_host::api::{AgentRequest, AgentResult, RunContext, StepRequest};
use bsm_host::cache::PluginCache;
use bsm_host::capabilities::Capabilities;
use bsm_host::capabilities::llm::{LlmEngine, Unconfigured};
use bsm_host::check::check_component;
use bsm_host::llm::LlmClient;
use bsm_host::reports::ReportStore;
use bsm_host::settings::HostSettings;
use bsm_host::{Plugin, Runtime, RuntimeOptions};
use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the system allocator: under load, glibc malloc was
/// a tenth of the server's CPU time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BSM: sandboxed WebAssembly plugins for AI-agent orchestration.
#[derive(Parser)]
#[command(name = "bsm", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Directory of plugins (`<id>.toml` manifests beside their `.wasm`).
    /// Defaults to the plugins shipped with this build.
    #[arg(long, env = "BSM_PLUGINS_DIR", global = true)]
    plugins_dir: Option<PathBuf>,

    /// Directory for the host's data; compiled plugins are cached in `cache/`.
    #[arg(long, env = "BSM_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,

    /// Configuration file (TOML): `[llm]`, `[cache]`, `[reports]`. Every
    /// setting has a default; `BSM_LLM_BASE_URL`, `BSM_LLM_API_KEY` and
    /// `BSM_LLM_MODEL` override the file's first LLM provider.
    #[arg(long, env = "BSM_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log filter (tracing's EnvFilter syntax); logs go to stderr.
    #[arg(long, env = "BSM_LOG", global = true)]
    log: Option<String>,

    /// Log format: `text` or `json` (default: json for `serve`, text otherwise).
    #[arg(long, env = "BSM_LOG_FORMAT", global = true)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent on one input and print its answer.
    Run {
        /// Id of the agent plugin.
        agent_id: String,
        /// The input text.
        #[arg(long)]
        input: String,
        /// A JSON file with the event payload.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Calling context the agent sees (`api`, `chat`, `ci`...).
        #[arg(long, default_value = "api")]
        context: String,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an orchestration step over a pipeline state and print its contribution.
    Step {
        /// Id of the step plugin.
        step_id: String,
        /// The event being handled, e.g. `pull_request.opened`.
        #[arg(long)]
        event: String,
        /// A JSON file with the event payload.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// A JSON file with the agent results so far: `[{"agentId", "output"|"error"}]`.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API: agents, orchestration jobs, reports, approvals,
    /// operations and metrics.
    #[command(
        after_help = "LLM provider (environment, overriding the configuration file):\n  \
        BSM_LLM_BASE_URL   OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1\n  \
        BSM_LLM_API_KEY    its API key, if it needs one\n  \
        BSM_LLM_MODEL      the default model\n\n\
        Also: BSM_DATA_DIR, BSM_PLUGINS_DIR, BSM_CONFIG, BSM_LOG, BSM_LOG_FORMAT (see `bsm --help`)."
    )]
    Serve(ServeArgs),
    /// Inspect plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

/// `bsm serve` settings. Each comes from the command line, else its `BSM_*`
/// variable, else the `[server]` table of the configuration file, else the
/// default shown.
#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is
    /// printed on stdout) [default: 127.0.0.1:3000]
    #[arg(long, env = "BSM_ADDR")]
    addr: Option<String>,
    /// Token for the mutating operations endpoints (at least 24 characters,
    /// not a default). Without it those endpoints are disabled.
    #[arg(long, env = "BSM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// An original BSM directory (data/agents, agents/registry.yaml,
    /// data/knowledge) whose agents run as prompt-agent instances.
    #[arg(long, env = "BSM_BSM_DIR")]
    bsm_dir: Option<PathBuf>,
    /// Requests per second allowed per client; 0 turns rate limiting off [default: 50]
    #[arg(long, env = "BSM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Burst allowed above the rate [default: 100]
    #[arg(long, env = "BSM_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Largest request body accepted, in bytes [default: 1048576]
    #[arg(long, env = "BSM_BODY_LIMIT")]
    body_limit: Option<usize>,
    /// Longest time a request may take, in ms, orchestration `?wait=true`
    /// included [default: 150000]
    #[arg(long, env = "BSM_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// How long shutdown waits for running jobs, in ms [default: 30000]
    #[arg(long, env = "BSM_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the plugins of the plugins directory with their budgets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check that a .wasm file is a valid BSM plugin component.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    let filter = cli.global.log.clone().unwrap_or_else(|| {
        if serving {
            "info".into()
        } else {
            "warn".into()
        }
    });
    let json = cli
        .global
        .log_format
        .as_deref()
        .map_or(serving, |f| f == "json");
    init_logging(&filter, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Errors are one line on stderr and a non-zero exit.
fn fail(e: anyhow::Error) -> ExitCode {
    let message = format!("{e:#}").replace('\n', " ");
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let plugins_dir = cli
        .global
        .plugins_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(bsm_host::SHIPPED_PLUGINS_DIR));
    let settings = HostSettings::load(cli.global.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Command::Serve(args) = cli.command {
        let file = settings.server.clone();
        return bsm_host::server::serve(bsm_host::server::ServeOptions {
            addr: args
                .addr
                .or(file.addr)
                .unwrap_or_else(|| "127.0.0.1:3000".into()),
            data_dir: cli.global.data_dir,
            plugins_dir,
            admin_token: args.admin_token.filter(|t| !t.is_empty()),
            bsm_dir: args.bsm_dir.or(file.bsm_dir),
            rate_limit_per_second: args.rate_limit.or(file.rate_limit).unwrap_or(50),
            rate_limit_burst: args.rate_burst.or(file.rate_burst).unwrap_or(100),
            body_limit_bytes: args.body_limit.or(file.body_limit).unwrap_or(1 << 20),
            request_timeout: std::time::Duration::from_millis(
                args.request_timeout_ms
                    .or(file.request_timeout_ms)
                    .unwrap_or(150_000),
            ),
            shutdown_grace: std::time::Duration::from_millis(
                args.shutdown_grace_ms
                    .or(file.shutdown_grace_ms)
                    .unwrap_or(30_000),
            ),
            settings,
        })
        .await;
    }
    let runtime = Runtime::new(RuntimeOptions {
        artifact_dir: Some(cli.global.data_dir.join("cache").join("components")),
        capabilities: capabilities(&settings, &cli.global.data_dir)?,
        cache: settings.cache.clone(),
        ..RuntimeOptions::default()
    })?;
    match cli.command {
        Command::Run {
            agent_id,
            input,
            payload,
            context,
            json,
        } => {
            load_one(&runtime, &plugins_dir, &agent_id).await?;
            let request = AgentRequest {
                input,
                payload: read_json(payload.as_deref())?.unwrap_or_else(|| serde_json::json!({})),
                context: RunContext::new(context),
            };
            let run = runtime.run_agent(&agent_id, request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                println!("{}", run.output.text);
            }
        }
        Command::Step {
            step_id,
            event,
            payload,
            results,
            json,
        } => {
            load_one(&runtime, &plugins_dir, &step_id).await?;
            let results: Vec<AgentResult> = match read_json(results.as_deref())? {
                Some(v) => serde_json::from_value(v)
                    .context("the results file is not a list of agent results")?,
                None => Vec::new(),
            };
            let mut context = RunContext::new("api");
            context.event = Some(event.clone());
            let request = StepRequest {
                event,
                payload: read_json(payload.as_deref())?.unwrap_or_else(|| serde_json::json!({})),
                context,
                results,
            };
            let run = runtime.run_step(&step_id, request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                println!("{}", serde_json::to_string(&run.contribution)?);
            }
        }
        Command::Serve(_) => unreachable!("handled above"),
        Command::Plugins {
            command: PluginsCommand::List { json },
        } => {
            let report = runtime.load_dir(&plugins_dir).await?;
            for failure in &report.failed {
                eprintln!("warning: skipped {failure}");
            }
            print_plugins(&report.loaded, json)?;
        }
        Command::Plugins {
            command: PluginsCommand::Check { file, json },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = check_component(&runtime, &bytes)
                .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: valid {} plugin ({} bytes, sha256 {})",
                    file.display(),
                    report.world,
                    report.bytes,
                    &report.digest[..12]
                );
            }
        }
    }
    Ok(())
}

/// The host capabilities as configured: the LLM client (or the clear
/// "not configured" answer), the plugin cache and the report directory.
fn capabilities(settings: &HostSettings, data_dir: &Path) -> anyhow::Result<Capabilities> {
    let llm: Arc<dyn LlmEngine> = match LlmClient::from_settings(&settings.llm)? {
        Some(client) => Arc::new(client),
        None => Arc::new(Unconfigured),
    };
    let reports_dir = settings
        .reports
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("reports"));
    let reports = ReportStore::open(&reports_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Capabilities {
        llm,
        cache: Arc::new(PluginCache::new(settings.cache.plugin.clone())),
        reports: Some(reports),
    })
}

/// Loads just the plugin a command needs (`<id>.toml`), so one broken plugin
/// elsewhere in the directory does not get in the way.
async fn load_one(runtime: &Runtime, dir: &Path, id: &str) -> anyhow::Result<Arc<Plugin>> {
    let manifest = dir.join(format!("{id}.toml"));
    if !manifest.is_file() {
        bail!(
            "no plugin {id:?} in {} (expected {}); `bsm plugins list` shows what is there",
            dir.display(),
            manifest.display()
        );
    }
    let plugin = runtime.load_plugin(&manifest).await?;
    runtime.registry().install(plugin.clone());
    Ok(plugin)
}

fn read_json(path: Option<&Path>) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(value))
}

fn print_plugins(plugins: &[Arc<Plugin>], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<_> = plugins.iter().map(|p| p.summary()).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:<6} {:<13} {:>8} {:>7} {:>6} {:>6}",
        "ID", "VERSION", "KIND", "DIGEST", "TIMEOUT", "MEMORY", "CONC", "QUEUE"
    );
    for p in plugins {
        let b = &p.manifest.budget;
        println!(
            "{:<24} {:<9} {:<6} {:<13} {:>6}ms {:>5}MB {:>6} {:>6}",
            p.id(),
            p.manifest.version,
            p.kind().to_string(),
            p.short_digest(),
            b.timeout_ms,
            b.memory_mb,
            b.max_concurrent,
            b.max_queued
        );
    }
    Ok(())
}
