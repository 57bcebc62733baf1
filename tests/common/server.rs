//! Starts `bsm serve` as a real process on a free port of 127.0.0.1 and
//! stops it when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An HTTP client for the tests (a generous timeout: a hung request fails
/// the test instead of hanging it).
pub fn http() -> reqwest::Client {
    bsm_llm::http_client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A strong admin token for tests.
pub const ADMIN_TOKEN: &str = "t0k3n-Zq8Xv2Lw9Pn4Rb7Ys1Ud6Hf3Kc";

/// A running `bsm serve`.
pub struct BsmServer {
    pub url: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl BsmServer {
    /// Starts the server with `env` on top of a clean BSM_* environment,
    /// and waits for its "listening on" line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsm"));
        cmd.arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("BSM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("BSM_ADDR", "127.0.0.1:0")
            .env("BSM_DATA_DIR", data_dir)
            .env("BSM_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        match line.and_then(|l| l.strip_prefix("listening on ").map(String::from)) {
            Some(url) => Ok(Self {
                url,
                data_dir: data_dir.to_path_buf(),
                child: Some(child),
                stderr,
            }),
            None => {
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                Err(format!(
                    "the server did not start ({status:?}): {}",
                    stderr.lock().unwrap()
                ))
            }
        }
    }

    /// Starts the server the way most suites want it: `llm_base_url` as the
    /// LLM (model `test-model`), the test admin token, no rate limit, then
    /// `extra` on top. Panics with the server's stderr if it does not start.
    pub fn with_llm(data_dir: &Path, llm_base_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("BSM_LLM_BASE_URL", llm_base_url),
            ("BSM_LLM_MODEL", "test-model"),
            ("BSM_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BSM_RATE_LIMIT", "0"),
        ];
        env.extend_from_slice(extra);
        Self::start(data_dir, &env).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The Prometheus text of `/metrics` now.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// What the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BsmServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
