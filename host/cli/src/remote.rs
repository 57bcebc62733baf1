//! `bsm plugins install|versions|rollback|promote|remove`: the hot-swap API
//! of a running server, from the command line. One line per outcome; a
//! refusal is the server's code and message, and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{PluginsCommand, ServerArgs};

/// Runs one remote plugins command.
pub async fn plugins(command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::Install {
            file,
            manifest,
            canary,
            server,
        } => {
            let manifest_path = manifest.unwrap_or_else(|| file.with_extension("toml"));
            let installed = install(&file, &manifest_path, canary, &server.server).await?;
            println!("installed {installed}");
        }
        PluginsCommand::Versions { id, json, server } => {
            let body =
                send(client().get(format!("{}/api/plugins/{id}/versions", base(&server)))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                println!(
                    "{:<12} {:<13} {:<12} {:<9} {:>7} {:>8}  INSTALLED",
                    "VERSION", "DIGEST", "STATUS", "ROUTE", "RUNS", "FAILURES"
                );
                for v in body["versions"].as_array().into_iter().flatten() {
                    println!(
                        "{:<12} {:<13} {:<12} {:<9} {:>7} {:>8}  {}{}",
                        v["version"].as_str().unwrap_or(""),
                        v["digest"].as_str().unwrap_or("").get(..12).unwrap_or(""),
                        v["status"].as_str().unwrap_or(""),
                        v["route"].as_str().unwrap_or(""),
                        v["runs"],
                        v["failures"],
                        v["installedAt"].as_str().unwrap_or(""),
                        v["reason"]
                            .as_str()
                            .map(|r| format!("  ({r})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        PluginsCommand::Rollback {
            id,
            version,
            server,
        } => {
            let body = serde_json::json!({ "version": version });
            let body = send(
                admin(client().post(format!("{}/api/plugins/{id}/rollback", base(&server))))?
                    .json(&body),
            )
            .await?;
            println!(
                "rolled back {id}: {} is current",
                body["current"]["version"].as_str().unwrap_or("?")
            );
        }
        PluginsCommand::Promote { id, server } => {
            let body = send(admin(
                client().post(format!("{}/api/plugins/{id}/promote", base(&server))),
            )?)
            .await?;
            println!(
                "promoted {id}: {} is current",
                body["current"]["version"].as_str().unwrap_or("?")
            );
        }
        PluginsCommand::Remove { id, server } => {
            send(admin(
                client().delete(format!("{}/api/plugins/{id}", base(&server))),
            )?)
            .await?;
            println!("removed {id}");
        }
        PluginsCommand::List { .. }
        | PluginsCommand::Check { .. }
        | PluginsCommand::Sign { .. }
        | PluginsCommand::New { .. }
        | PluginsCommand::Test { .. }
        | PluginsCommand::Dev { .. } => {
            unreachable!("local commands are handled by the caller")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Uploads a component with its manifest (and `FILE.sig`, when present) to
/// the server's hot-swap API; answers `ID VERSION (sha256 ...) as STATUS`.
pub async fn install(
    file: &Path,
    manifest_path: &Path,
    canary: Option<u8>,
    server: &str,
) -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read the manifest {}", manifest_path.display()))?;
    let id = manifest_id(&manifest, manifest_path)?;
    let component =
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(component).file_name(file_name(file)),
        )
        .text("manifest", manifest);
    let sig_path = PathBuf::from(format!("{}.sig", file.display()));
    if let Ok(signature) = std::fs::read_to_string(&sig_path) {
        form = form.text("signature", signature.trim().to_string());
    }
    let mut url = format!("{}/api/plugins/{id}", server.trim_end_matches('/'));
    if let Some(p) = canary {
        url.push_str(&format!("?canary={p}"));
    }
    let body = send(admin(client().put(url))?.multipart(form)).await?;
    let v = &body["version"];
    Ok(format!(
        "{} {} (sha256 {}) as {}{}",
        v["pluginId"].as_str().unwrap_or(&id),
        v["version"].as_str().unwrap_or("?"),
        v["digest"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
        v["canaryPercent"]
            .as_u64()
            .map(|p| format!(" taking {p}% of new runs"))
            .unwrap_or_default()
    ))
}

fn client() -> reqwest::Client {
    bsm_platform::llm::http_client::builder()
        .build()
        .expect("an HTTP client with default settings builds")
}

fn base(server: &ServerArgs) -> &str {
    server.server.trim_end_matches('/')
}

/// Adds the admin token from `BSM_ADMIN_TOKEN` (never a command-line value).
fn admin(request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
    let token = std::env::var("BSM_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("set BSM_ADMIN_TOKEN to the server's admin token")?;
    Ok(request.bearer_auth(token))
}

/// Sends a request; an API error becomes `CODE: message`.
async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the server: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    match body["error"]["code"].as_str() {
        Some(code) => bail!(
            "{code}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .replace('\n', " ")
        ),
        None => bail!("the server answered {status}"),
    }
}

fn manifest_id(manifest: &str, path: &Path) -> anyhow::Result<String> {
    let table: toml::Table = toml::from_str(manifest)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    table
        .get("id")
        .and_then(|v| v.as_str())
        .map(String::from)
        .with_context(|| format!("{}: the manifest has no id", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component.wasm".into())
}
