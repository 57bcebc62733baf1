//! Captures a plugin's stdout/stderr in memory, bounded: the first `cap`
//! bytes are kept (that is where a panic message is) and the rest is counted
//! and dropped. Writes never fail, so a chatty plugin cannot turn its own
//! logging into a crash.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Buffer {
    kept: Vec<u8>,
    dropped: usize,
}

/// A bounded in-memory sink for one guest output stream.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    buffer: Arc<Mutex<Buffer>>,
    cap: usize,
}

impl CapturedOutput {
    pub fn new(cap: usize) -> Self {
        Self {
            buffer: Arc::default(),
            cap,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buffer.lock().unwrap();
        let room = self.cap.saturating_sub(b.kept.len());
        let take = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..take]);
        b.dropped += bytes.len() - take;
    }

    /// What was captured, lossily decoded, with a note when bytes were dropped.
    pub fn text(&self) -> String {
        let b = self.buffer.lock().unwrap();
        let mut text = String::from_utf8_lossy(&b.kept).into_owned();
        if b.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes dropped]", b.dropped));
        }
        text
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The panic message a Rust guest printed before aborting, if any.
///
/// Rust's default hook prints `thread '<name>' panicked at <file>:<line>:<col>:`
/// followed by the message on the next line(s).
pub fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let after = &stderr[start..];
    let mut lines = after.lines();
    let location = lines
        .next()?
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: ") && !l.starts_with("stack backtrace"))
        .collect();
    let message = message.join("\n").trim().to_string();
    Some(if message.is_empty() {
        format!("panicked at {location}")
    } else {
        format!("{message} (at {location})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_counts_the_rest() {
        let mut out = CapturedOutput::new(4);
        out.write(Bytes::from_static(b"abcdef")).unwrap();
        out.write(Bytes::from_static(b"gh")).unwrap();
        assert_eq!(out.text(), "abcd\n[4 more bytes dropped]");
    }

    #[test]
    fn finds_the_panic_message() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:14:9:\npanicker gave up on \"x\"\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "panicker gave up on \"x\" (at src/lib.rs:14:9)"
        );
        assert_eq!(panic_message("nothing here"), None);
    }
}
