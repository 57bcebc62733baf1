//! Markdown reports written by the host (atomically, off the request path).
//!
//! ```no_run
//! let r = bsm_sdk::reports::write("review.md", "# Review\nAll good.").unwrap();
//! println!("wrote report {} ({} bytes)", r.id, r.bytes);
//! ```

use crate::bindings::agent::bsm::plugin::reports as wit;

pub use wit::{Error as ReportError, ReportRef};

/// Writes a report; `name` is a relative file name such as `review.md`.
pub fn write(name: &str, markdown: &str) -> Result<ReportRef, ReportError> {
    wit::write(name, markdown)
}
