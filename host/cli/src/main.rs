//! `bsm`: run agents, steps and jobs, serve the HTTP API, inspect plugins.
//!
//! Every command that runs something builds the platform through the one
//! composition root ([`Platform::build`]) and runs through its governed
//! path, in the `cli` calling context by default, exactly as the server
//! would.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bsm_platform::orchestration::JobEvent;
use bsm_platform::runtime::api::{AgentRequest, AgentResult, RunContext, StepRequest};
use bsm_platform::runtime::check::check_component;
use bsm_platform::runtime::{Plugin, Runtime, RuntimeOptions};
use bsm_platform::signing;
use bsm_platform::{AgentSet, HostSettings, Platform, PlatformOptions, PluginSelection};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

mod authoring;
mod recording;
mod remote;
mod scaffold;

mod allocator;

/// The plugins shipped with this build (`plugins/*`, compiled by the build
/// script); the default plugins directory.
const SHIPPED_PLUGINS_DIR: &str = env!("BSM_SHIPPED_PLUGINS_DIR");

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

    /// Directory for the host's data: the database (`bsm.db`), reports,
    /// compiled plugins (`cache/`).
    #[arg(long, env = "BSM_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,

    /// An original BSM directory (data/agents, agents/registry.yaml,
    /// data/knowledge) whose agents run as prompt-agent instances. Default:
    /// the agent set shipped in this repository (examples/bsm).
    #[arg(long, env = "BSM_BSM_DIR", global = true)]
    bsm_dir: Option<PathBuf>,

    /// Refuse to start when any agent of the BSM directory has governance
    /// violations, instead of quarantining it (for CI).
    #[arg(long, env = "BSM_STRICT", global = true)]
    strict: bool,

    /// Configuration file (TOML): `[llm]`, `[cache]`, `[reports]`,
    /// `[governance]`, `[server]`, `[pipelines]`. Every setting has a
    /// default; `BSM_LLM_BASE_URL`, `BSM_LLM_API_KEY` and `BSM_LLM_MODEL`
    /// override the file's first LLM provider.
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
    /// Run an agent (a plugin or a BSM agent) on one input and print its answer.
    Run {
        /// Id of the agent.
        agent_id: String,
        /// The input text (with --replay: the recorded one by default).
        #[arg(long, required_unless_present = "replay")]
        input: Option<String>,
        /// A JSON file with the event payload.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Calling context the agent is governed in (`cli`, `api`, `ci`...).
        #[arg(long, default_value = "cli")]
        context: String,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tape: recording::TapeArgs,
    },
    /// Run an orchestration step over a pipeline state and print its contribution.
    Step {
        /// Id of the step plugin.
        step_id: String,
        /// The event being handled, e.g. `pull_request.opened` (with
        /// --replay: the recorded one by default).
        #[arg(long, required_unless_present = "replay")]
        event: Option<String>,
        /// A JSON file with the event payload.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// A JSON file with the agent results so far: `[{"agentId", "output"|"error"}]`.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Calling context the step is governed in.
        #[arg(long, default_value = "cli")]
        context: String,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tape: recording::TapeArgs,
    },
    /// Orchestration jobs: an event handled by its pipeline.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Serve the HTTP API: agents, orchestration jobs, reports, approvals,
    /// operations and metrics.
    #[command(
        after_help = "LLM provider (environment, overriding the configuration file):\n  \
        BSM_LLM_BASE_URL   OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1\n  \
        BSM_LLM_API_KEY    its API key, if it needs one\n  \
        BSM_LLM_MODEL      the default model\n\n\
        Admin token (environment only, never a flag): BSM_ADMIN_TOKEN, at least 24 characters, \
        not a default; without it the mutating operations endpoints are disabled.\n\n\
        Also: BSM_DATA_DIR, BSM_PLUGINS_DIR, BSM_BSM_DIR, BSM_STRICT, BSM_CONFIG, BSM_LOG, \
        BSM_LOG_FORMAT (see `bsm --help`)."
    )]
    Serve(ServeArgs),
    /// Internal: compiles a component (stdin) into an artifact file, for
    /// the host's compiler process (see `artifact_cache::CompilerProcess`).
    #[command(hide = true, name = "__compile-artifact")]
    CompileArtifact {
        #[arg(long)]
        max_instances: u32,
        out: PathBuf,
    },
    /// Write, test and install plugins; inspect the plugins directory.
    #[command(alias = "plugin")]
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// API keys (who may call the server, in which contexts, with which
    /// scopes; kept in the data directory) and signing keys for plugins.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Knowledge collections: ingest folders, search.
    Knowledge {
        #[command(subcommand)]
        command: KnowledgeCommand,
    },
}

#[derive(Subcommand)]
enum KnowledgeCommand {
    /// Ingest a folder of markdown and text files (or an original BSM
    /// `data/knowledge` with its `index.json`) into a collection. Unchanged
    /// files are skipped by content hash; changed files replace their
    /// chunks; files gone from the folder lose theirs. A running server sees
    /// the result after a restart (or ingest through its API instead).
    Ingest {
        /// The folder.
        dir: PathBuf,
        /// The collection (created on first use).
        #[arg(long, default_value = "default")]
        collection: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search a collection and print the hits.
    Search {
        collection: String,
        query: String,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// `hybrid`, `vector` or `keyword`.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Print the hits as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print it once (only its digest is stored).
    /// A running server on the same data directory accepts it within 2 s.
    Create {
        /// What the key is for (shown in listings and approval records).
        name: String,
        /// A context the key may act in (repeat; the first is its default).
        #[arg(long = "context", required = true)]
        contexts: Vec<String>,
        /// A scope: run, orchestrate, read or admin (repeat).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Print the key and its secret as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the API keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by its id; a running server on the same data
    /// directory refuses it within 2 s.
    Revoke { id: String },
    /// Make an ed25519 key pair: the private key goes to a file (mode 0600),
    /// the public key (for `[plugins] trusted-keys`) is printed.
    Generate {
        /// Where to write the private key.
        #[arg(long, default_value = "bsm-signing.key")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run the pipeline of an event, print its progress and its decision.
    Run {
        /// The event, e.g. `pull_request.opened`.
        event: String,
        /// A JSON file with the event payload.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Calling context every agent of the job is governed in.
        #[arg(long, default_value = "cli")]
        context: String,
        /// Print the finished job as JSON instead of progress lines.
        #[arg(long)]
        json: bool,
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
    /// Serve unauthenticated requests on a non-loopback address while no
    /// API key exists (without it such a server refuses to start)
    #[arg(long, env = "BSM_ALLOW_OPEN")]
    allow_open: Option<bool>,
    /// Requests per second allowed per client; 0 turns rate limiting off [default: 50]
    #[arg(long, env = "BSM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Burst allowed above the rate [default: 100]
    #[arg(long, env = "BSM_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Proxies (addresses or networks, comma-separated) whose
    /// X-Forwarded-For names the client; nobody else's is believed [default: none]
    #[arg(long, env = "BSM_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// How often the rate limiter forgets clients that went quiet, in ms [default: 60000]
    #[arg(long, env = "BSM_RATE_LIMIT_PRUNE_MS")]
    rate_limit_prune_ms: Option<u64>,
    /// Largest request body accepted, in bytes [default: 1048576]
    #[arg(long, env = "BSM_BODY_LIMIT")]
    body_limit: Option<usize>,
    /// Longest time a request may take, in ms, orchestration `?wait=true`
    /// included [default: 150000]
    #[arg(long, env = "BSM_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// How long `POST /api/orchestrator/run?wait=true` waits for the job
    /// before answering 202 with its id, in ms; always less than the
    /// request timeout [default: the request timeout less a tenth, at most 1 s]
    #[arg(long, env = "BSM_WAIT_TIMEOUT_MS")]
    wait_timeout_ms: Option<u64>,
    /// Orchestration jobs running at once [default: 256]
    #[arg(long, env = "BSM_MAX_RUNNING_JOBS")]
    max_running_jobs: Option<usize>,
    /// Jobs waiting for a running slot; beyond, new jobs get 503
    /// JOBS_OVERLOADED with Retry-After [default: 1024]
    #[arg(long, env = "BSM_MAX_QUEUED_JOBS")]
    max_queued_jobs: Option<usize>,
    /// Largest plugin upload (`PUT /api/plugins/{id}`), in bytes [default: 67108864]
    #[arg(long, env = "BSM_UPLOAD_LIMIT")]
    upload_limit: Option<usize>,
    /// How long shutdown waits for running jobs, in ms [default: 30000]
    #[arg(long, env = "BSM_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Create a plugin crate: source, manifest, tests, README, and a
    /// `.cargo/config.toml` so that `cargo build --release` makes the
    /// component.
    New {
        /// The plugin's name: its id, crate and directory name.
        name: String,
        #[arg(long, value_enum, default_value = "agent")]
        kind: scaffold::Kind,
        /// Where to create it [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A BSM checkout (holding sdk/ and harness/) to depend on by path
        /// [default: the checkout this bsm was built from]
        #[arg(long, conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// A git repository of BSM to depend on instead of a checkout.
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
    /// Build a plugin crate, then run its tests against the built component.
    Test {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Arguments for `cargo test` (after `--`), e.g. a test name.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Rebuild a plugin crate on every change and install each build into a
    /// running server (hot swap); a failed build or a refused version leaves
    /// the serving one in place.
    Dev {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
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
    /// Sign a component: writes FILE.sig, a detached signature over its digest.
    Sign {
        file: PathBuf,
        /// The private key file (`bsm keys generate`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Install a version into a running server (hot swap). FILE.sig, when
    /// present, is sent as its signature.
    Install {
        /// The component.
        file: PathBuf,
        /// Its manifest [default: the .toml beside the component]
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Install as a canary taking this percentage of new runs.
        #[arg(long)]
        canary: Option<u8>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the versions a running server keeps of a plugin.
    Versions {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make an earlier version current again (or drop the canary).
    Rollback {
        id: String,
        /// The version to go back to [default: the one before the current]
        version: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make the canary of a plugin current.
    Promote {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Unload a plugin from a running server (runs in flight finish).
    Remove {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where the running server is, and the admin token (never on the command
/// line: from BSM_ADMIN_TOKEN).
#[derive(Args)]
struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "BSM_SERVER", default_value = "http://127.0.0.1:3000")]
    server: String,
}

/// `bsm keys create|list|revoke` on the data directory.
async fn api_keys(data_dir: &Path, command: KeysCommand) -> anyhow::Result<()> {
    use bsm_platform::access::{ApiKeys, KeyRequest};
    use secrecy::ExposeSecret;
    let keys = ApiKeys::open(data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    match command {
        KeysCommand::Create {
            name,
            contexts,
            scopes,
            json,
        } => {
            let issued = keys
                .create(KeyRequest {
                    name,
                    contexts,
                    scopes,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let secret = issued.token.expose_secret();
            if json {
                let body = serde_json::json!({ "key": issued.key, "secret": secret });
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                println!("{secret}");
                eprintln!(
                    "created API key {} ({}) for contexts {} with scopes {}; the key is shown only now",
                    issued.key.id,
                    issued.key.name,
                    issued.key.contexts.join(", "),
                    issued
                        .key
                        .scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        KeysCommand::List { json } => {
            let list = keys.list().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "keys": list }))?
                );
            } else {
                for k in list {
                    println!(
                        "{}  {:<24} contexts {:<16} scopes {:<28} {}",
                        k.id,
                        k.name,
                        k.contexts.join(","),
                        k.scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        k.revoked_at.map_or_else(
                            || format!("created {}", k.created_at),
                            |at| format!("revoked {at}")
                        )
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let key = keys.revoke(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("revoked API key {} ({})", key.id, key.name);
        }
        KeysCommand::Generate { .. } => unreachable!("signing keys are handled by the caller"),
    }
    Ok(())
}

/// The GitHub webhook secret: `BSM_GITHUB_WEBHOOK_SECRET`, else the
/// configured file, which must not be readable or writable by others.
fn webhook_secret(file: Option<&Path>) -> anyhow::Result<Option<secrecy::SecretString>> {
    if let Ok(secret) = std::env::var("BSM_GITHUB_WEBHOOK_SECRET")
        && !secret.is_empty()
    {
        return Ok(Some(secret.into()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    Ok(Some(bsm_platform::secrets::read_secret_file(path)?.into()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompileArtifact { max_instances, out } = &cli.command {
        return compile_artifact(*max_instances, out);
    }
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
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// The compiler process: no logging, no async runtime, one component.
fn compile_artifact(max_instances: u32, out: &Path) -> ExitCode {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return ExitCode::FAILURE;
    }
    let pool = bsm_platform::runtime::engine::PoolSettings {
        max_instances,
        ..Default::default()
    };
    let engine = match bsm_platform::runtime::engine::build_engine(&pool) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot build the engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(artifact) => {
            match bsm_platform::runtime::artifact_cache::write_atomically(out, &artifact) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write {}: {e:#}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(bsm_platform::runtime::artifact_cache::CompilerProcess::INVALID as u8)
        }
    }
}

/// `bsm knowledge ...`: a progress bar on stderr while ingesting (hidden
/// when stderr is not a terminal), the summary or hits on stdout.
async fn knowledge_command(
    knowledge: &bsm_platform::knowledge::Knowledge,
    command: KnowledgeCommand,
) -> anyhow::Result<()> {
    use bsm_platform::knowledge::{IngestEvent, SearchMode, SearchRequest, ingest::FileOutcome};
    match command {
        KnowledgeCommand::Ingest {
            dir,
            collection,
            json,
        } => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} files {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let summary = knowledge
                .ingest_dir(&dir, &collection, |event| match event {
                    IngestEvent::Listed { files } => bar.set_length(files as u64),
                    IngestEvent::File { path, outcome } => {
                        bar.inc(1);
                        let what = match outcome {
                            FileOutcome::Unchanged => "unchanged".to_string(),
                            FileOutcome::Indexed { chunks } => format!("{chunks} chunks"),
                            FileOutcome::Skipped { reason } => format!("skipped: {reason}"),
                        };
                        bar.set_message(format!("{path}: {what}"));
                    }
                })
                .await;
            bar.finish_and_clear();
            let summary = summary?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{}: {} files, {} indexed ({} chunks), {} unchanged, {} removed, {} skipped",
                    summary.collection,
                    summary.files,
                    summary.indexed,
                    summary.chunks,
                    summary.unchanged,
                    summary.removed,
                    summary.skipped.len()
                );
                for s in &summary.skipped {
                    println!("  skipped {}: {}", s.path, s.reason);
                }
            }
        }
        KnowledgeCommand::Search {
            collection,
            query,
            top_k,
            mode,
            json,
        } => {
            let mode: SearchMode = serde_json::from_value(Value::String(mode.clone()))
                .map_err(|_| anyhow::anyhow!("--mode {mode:?}: use hybrid, vector or keyword"))?;
            let caller = bsm_platform::runtime::capabilities::Caller {
                plugin_id: "cli".into(),
                correlation_id: "cli".into(),
            };
            let request = SearchRequest {
                query,
                top_k,
                filter: Vec::new(),
                mode,
            };
            let hits = knowledge.search(&caller, &collection, &request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for h in hits {
                    let source = h.source.as_deref().unwrap_or(&h.id);
                    let first = h.text.lines().next().unwrap_or_default();
                    println!("{:.4}  {source}  {first}", h.score);
                }
            }
        }
    }
    Ok(())
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

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    let mut settings = HostSettings::load(global.config.as_deref(), |k| std::env::var(k).ok())?;
    settings.governance.strict |= global.strict;
    let plugins_dir = global
        .plugins_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(SHIPPED_PLUGINS_DIR));
    let agents = match global.bsm_dir.clone().or(settings.server.bsm_dir.clone()) {
        Some(dir) => AgentSet::Dir(dir),
        None => AgentSet::Shipped(PathBuf::from(bsm_platform::SHIPPED_AGENTS_DIR)),
    };
    let platform_options = |plugins: PluginSelection| PlatformOptions {
        data_dir: global.data_dir.clone(),
        plugins_dir: plugins_dir.clone(),
        plugins,
        agents: agents.clone(),
        settings: settings.clone(),
        watch: false,
        background: false,
        tape: None,
        compiler: compiler_process(),
    };
    match cli.command {
        Command::CompileArtifact { max_instances, out } => {
            return Ok(compile_artifact(max_instances, &out));
        }
        Command::Serve(args) => {
            raise_open_file_limit();
            let file = settings.server.clone();
            let mut platform = platform_options(PluginSelection::All);
            platform.watch = true;
            platform.background = true;
            if let Some(limit) = args.upload_limit {
                platform.settings.plugins.upload_limit = limit;
            }
            if let Some(n) = args.max_running_jobs {
                platform.settings.jobs.max_running = n;
            }
            if let Some(n) = args.max_queued_jobs {
                platform.settings.jobs.max_queued = n;
            }
            bsm_server::serve(bsm_server::ServeOptions {
                addr: args
                    .addr
                    .or(file.addr)
                    .unwrap_or_else(|| "127.0.0.1:3000".into()),
                platform,
                // A secret is never a command-line value (visible in `ps`
                // and shell history): the environment (or a file) only.
                admin_token: std::env::var("BSM_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(Into::into),
                github_webhook_secret: webhook_secret(file.github_webhook_secret_file.as_deref())?,
                allow_open: args.allow_open.or(file.allow_open).unwrap_or(false),
                rate_limit_per_second: args.rate_limit.or(file.rate_limit).unwrap_or(50),
                rate_limit_burst: args.rate_burst.or(file.rate_burst).unwrap_or(100),
                trusted_proxies: bsm_server::rate_limit::parse_proxies(
                    &args
                        .trusted_proxies
                        .or(file.trusted_proxies)
                        .unwrap_or_default(),
                )?,
                rate_limit_prune: Duration::from_millis(
                    args.rate_limit_prune_ms
                        .or(file.rate_limit_prune_ms)
                        .unwrap_or(60_000)
                        .max(10),
                ),
                body_limit_bytes: args.body_limit.or(file.body_limit).unwrap_or(1 << 20),
                request_timeout: Duration::from_millis(
                    args.request_timeout_ms
                        .or(file.request_timeout_ms)
                        .unwrap_or(150_000),
                ),
                wait_timeout: args
                    .wait_timeout_ms
                    .or(file.wait_timeout_ms)
                    .map(Duration::from_millis),
                shutdown_grace: Duration::from_millis(
                    args.shutdown_grace_ms
                        .or(file.shutdown_grace_ms)
                        .unwrap_or(30_000),
                ),
                on_listening: Some(allocator::release_unused),
            })
            .await?;
        }
        Command::Run {
            agent_id,
            input,
            payload,
            context,
            json,
            tape,
        } => {
            let session = tape.session()?;
            let mut options = platform_options(PluginSelection::Only(vec![agent_id.clone()]));
            options.tape = session.as_ref().map(|s| s.tape.clone());
            let platform = Platform::build(options).await?;
            require_known(&platform, &agent_id, &plugins_dir)?;
            let recorded = |field: &str| session.as_ref().and_then(|s| s.recorded(field)).cloned();
            let input = match input.or_else(|| recorded("input")?.as_str().map(String::from)) {
                Some(input) => input,
                None => bail!("--input is required (the recording holds no input)"),
            };
            let payload = match read_json(payload.as_deref())? {
                Some(payload) => payload,
                None => recorded("payload").unwrap_or_else(|| json!({})),
            };
            let request = AgentRequest {
                input,
                payload,
                context: RunContext::new(context),
            };
            let asked = json!({ "input": request.input, "payload": request.payload });
            let result = platform.run_agent(&agent_id, request).await;
            let calls =
                recording::close(session, &agent_id, asked, &result, |g| json!(g.run.output))?;
            let governed = result?;
            if json {
                print_governed(&governed.run, &governed.actions, calls)?;
            } else {
                println!("{}", governed.run.output.text);
            }
            // Syncs the reports the run wrote (and saves knowledge).
            platform.shutdown(Duration::ZERO).await?;
        }
        Command::Step {
            step_id,
            event,
            payload,
            results,
            context,
            json,
            tape,
        } => {
            let session = tape.session()?;
            let mut options = platform_options(PluginSelection::Only(vec![step_id.clone()]));
            options.tape = session.as_ref().map(|s| s.tape.clone());
            let platform = Platform::build(options).await?;
            require_known(&platform, &step_id, &plugins_dir)?;
            let recorded = |field: &str| session.as_ref().and_then(|s| s.recorded(field)).cloned();
            let results = match read_json(results.as_deref())? {
                Some(v) => Some(v),
                None => recorded("results"),
            };
            let results: Vec<AgentResult> = match results {
                Some(v) => serde_json::from_value(v)
                    .context("the results file is not a list of agent results")?,
                None => Vec::new(),
            };
            let event = match event.or_else(|| recorded("event")?.as_str().map(String::from)) {
                Some(event) => event,
                None => bail!("--event is required (the recording holds no event)"),
            };
            let payload = match read_json(payload.as_deref())? {
                Some(payload) => payload,
                None => recorded("payload").unwrap_or_else(|| json!({})),
            };
            let mut run_context = RunContext::new(context);
            run_context.event = Some(event.clone());
            let asked = json!({ "event": event, "payload": payload, "results": results });
            let request = StepRequest {
                event,
                payload,
                context: run_context,
                results,
            };
            let result = platform.run_step(&step_id, request).await;
            let calls = recording::close(session, &step_id, asked, &result, |g| {
                json!(g.run.contribution)
            })?;
            let governed = result?;
            if json {
                print_governed(&governed.run, &governed.actions, calls)?;
            } else {
                println!("{}", serde_json::to_string(&governed.run.contribution)?);
            }
            platform.shutdown(Duration::ZERO).await?;
        }
        Command::Job {
            command:
                JobCommand::Run {
                    event,
                    payload,
                    context,
                    json,
                },
        } => {
            let platform = Platform::build(platform_options(PluginSelection::All)).await?;
            let payload = read_json(payload.as_deref())?.unwrap_or_else(|| json!({}));
            return run_job(&platform, event, payload, context, json).await;
        }
        Command::Plugins {
            command:
                PluginsCommand::New {
                    name,
                    kind,
                    dir,
                    sdk,
                    sdk_git,
                },
        } => {
            new_plugin(&name, kind, dir, sdk, sdk_git)?;
        }
        Command::Plugins {
            command: PluginsCommand::Test { dir, cargo_args },
        } => {
            return authoring::test(&dir, &cargo_args);
        }
        Command::Plugins {
            command: PluginsCommand::Dev { dir, server },
        } => {
            return authoring::dev(&dir, &server.server).await;
        }
        Command::Plugins {
            command: PluginsCommand::List { json },
        } => {
            let runtime = inspection_runtime(&global.data_dir, &settings)?;
            let report = runtime.load_dir(&plugins_dir).await?;
            for failure in &report.failed {
                eprintln!("warning: skipped {failure}");
            }
            print_plugins(&report.loaded, json)?;
        }
        Command::Plugins {
            command:
                command @ (PluginsCommand::Install { .. }
                | PluginsCommand::Versions { .. }
                | PluginsCommand::Rollback { .. }
                | PluginsCommand::Promote { .. }
                | PluginsCommand::Remove { .. }),
        } => {
            return remote::plugins(command).await;
        }
        Command::Plugins {
            command: PluginsCommand::Sign { file, key },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let key = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            let digest = bsm_platform::runtime::artifact_cache::digest(&bytes);
            let signature = signing::sign_digest(&key, &digest)?;
            let out = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&out, format!("{signature}\n"))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "signed {} (sha256 {}): {}",
                file.display(),
                &digest[..12],
                out.display()
            );
        }
        Command::Knowledge { command } => {
            let knowledge = bsm_platform::open_knowledge_only(&settings, &global.data_dir).await?;
            knowledge_command(&knowledge, command).await?;
            knowledge.flush().await?;
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let (private, public) = signing::generate_key();
            write_private(&out, &private)?;
            println!("private key: {} (keep it secret)", out.display());
            println!("public key:  {public}");
            println!("trust it with: [plugins] trusted-keys = [\"{public}\"]");
        }
        Command::Keys { command } => {
            api_keys(&global.data_dir, command).await?;
        }
        Command::Plugins {
            command: PluginsCommand::Check { file, json },
        } => {
            let runtime = inspection_runtime(&global.data_dir, &settings)?;
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
    Ok(ExitCode::SUCCESS)
}

/// `bsm plugin new`: the crate, then what to do next.
fn new_plugin(
    name: &str,
    kind: scaffold::Kind,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
    sdk_git: Option<String>,
) -> anyhow::Result<()> {
    use scaffold::SdkSource;
    let source = match (sdk, sdk_git) {
        (_, Some(url)) => SdkSource::Git(url),
        (Some(root), None) => {
            let root = root
                .canonicalize()
                .with_context(|| format!("--sdk {}: no such directory", root.display()))?;
            if !root.join("sdk/Cargo.toml").is_file() || !root.join("harness/Cargo.toml").is_file()
            {
                bail!(
                    "--sdk {}: not a BSM checkout (it needs sdk/ and harness/)",
                    root.display()
                );
            }
            SdkSource::Path(root)
        }
        (None, None) => SdkSource::Path(scaffold::built_from().context(
            "the BSM checkout this bsm was built from is gone: pass --sdk PATH (a BSM checkout) or --sdk-git URL",
        )?),
    };
    let lock = match &source {
        SdkSource::Path(root) => Some(root.join("Cargo.lock")),
        SdkSource::Git(_) => None,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = scaffold::create(name, kind, &dir, &source, lock.as_deref())?;
    println!("created {name} in {}:", dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!(
        "\nnext:\n  cd {}\n  bsm plugin test                                  # build, then run tests/ against the component\n  bsm plugin dev --server http://127.0.0.1:3000    # hot-swap every change into a running server (BSM_ADMIN_TOKEN)",
        dir.display()
    );
    Ok(())
}

/// `--json` of a governed run: the run, plus what governance did with each
/// action it emitted.
fn print_governed(
    run: &impl serde::Serialize,
    actions: &[bsm_platform::ActionOutcome],
    host_calls: Option<Value>,
) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(run)?;
    v["governedActions"] = serde_json::to_value(actions)?;
    if let Some(calls) = host_calls {
        v["hostCalls"] = calls;
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}

/// This very program as the compiler process; `None` (compile in-process)
/// when its path is unknown.
fn compiler_process() -> Option<bsm_platform::runtime::artifact_cache::CompilerProcess> {
    let program = std::env::current_exe().ok()?;
    Some(bsm_platform::runtime::artifact_cache::CompilerProcess {
        program,
        args: vec!["__compile-artifact".into()],
    })
}

/// A bare runtime for the commands that only inspect components: no
/// database, no LLM, no agents.
fn inspection_runtime(data_dir: &Path, settings: &HostSettings) -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeOptions {
        artifact_dir: Some(data_dir.join("cache").join("components")),
        cache: settings.cache.clone(),
        ..RuntimeOptions::default()
    })
}

/// Says where the command looked when it does not know a plugin.
fn require_known(platform: &Platform, id: &str, plugins_dir: &Path) -> anyhow::Result<()> {
    if platform.knows(id) {
        return Ok(());
    }
    bail!(
        "no plugin {id:?} in {} (expected {}) nor in the BSM directory; `bsm plugins list` shows what is there",
        plugins_dir.display(),
        plugins_dir.join(format!("{id}.toml")).display()
    )
}

/// Submits a job, prints its events as they happen (or the finished job as
/// JSON), and exits non-zero when the job fails.
async fn run_job(
    platform: &Platform,
    event: String,
    payload: Value,
    context: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let job = platform.submit_job(event, payload, context).await?;
    let (history, rx) = platform
        .subscribe_job(&job.id)
        .context("the job's progress channel is gone")?;
    if !json {
        println!("job {} ({}, pipeline {})", job.id, job.event, job.pipeline);
    }
    let mut ok = true;
    let mut print = |e: &JobEvent| {
        if e.kind == "job.failed" {
            ok = false;
        }
        if !json && let Some(line) = progress_line(e) {
            println!("{line}");
        }
        e.is_terminal()
    };
    let mut ended = history.iter().any(|e| print(e));
    if let Some(mut rx) = rx {
        while !ended {
            match rx.recv().await {
                Ok(e) => ended = print(&e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    // The job's end is stored before it is announced.
    let finished = platform.job(&job.id).await?.unwrap_or(job);
    if json {
        // Through a tree, so the stored result (JSON text) is indented too.
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&finished)?)?
        );
    }
    platform.shutdown(Duration::from_secs(5)).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per job event, for a person watching a job run.
fn progress_line(e: &JobEvent) -> Option<String> {
    let d: Value = serde_json::from_str(e.data.get()).unwrap_or_default();
    let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    Some(match e.kind {
        "route" => format!("route: {} ({})", d["agents"], text("mode")),
        "agent.started" => format!("  {} started", text("agentId")),
        "agent.finished" => format!(
            "  {} finished in {:.0} ms",
            text("agentId"),
            d["durationMs"].as_f64().unwrap_or(0.0)
        ),
        "agent.failed" => format!(
            "  {} failed: {} ({})",
            text("agentId"),
            text("error"),
            text("errorCode")
        ),
        "decision" => format!("decision: {} ({})", text("verdict"), text("reason")),
        "report" => format!("report: {} ({} bytes)", text("id"), d["bytes"]),
        "job.finished" => format!(
            "job completed in {:.0} ms",
            d["durationMs"].as_f64().unwrap_or(0.0)
        ),
        "job.failed" => format!("job failed: {}", text("error")),
        _ => return None,
    })
}

fn read_json(path: Option<&Path>) -> anyhow::Result<Option<Value>> {
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

/// A server holds a socket per client and per upstream LLM call: thousands
/// of runs in flight need more descriptors than the usual soft limit of
/// 1,024. Raises the soft limit to the hard one, as Go and Node do.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    let raised = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = limit.rlim_max;
        if limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    };
    if !raised {
        tracing::warn!(
            "could not raise the open-file limit; many runs in flight may fail to connect"
        );
    }
}
