//! Markdown reports written by the host (atomically, off the request path).
//!
//! ```no_run
//! let r = bsm_sdk::reports::write("review.md", "# Review\nAll good.").unwrap();
//! println!("wrote report {} ({} bytes)", r.id, r.bytes);
//! ```

use crate::bindings::agent::bsm::plugin::reports as wit;

///
/// ```no_run
/// use bsm_sdk::reports::{self, ReportError};
/// let link = match reports::write("review.md", "# Review") {
///     Ok(r) => format!("report {}", r.id),
///     Err(ReportError::QuotaExceeded(why)) => format!("no report: {why}"),
///     Err(e) => format!("no report: {e}"),
/// };
/// ```
pub use wit::{Error as ReportError, ReportRef};

/// Writes a report; `name` is a relative file name such as `review.md`.
///
/// ```no_run
/// let report = bsm_sdk::reports::write("security.md", "# Security\nNo findings.")?;
/// let out = bsm_sdk::Output::text("No findings.").with_metadata(format!(r#"{{"report": "{}"}}"#, report.id));
/// # Ok::<(), bsm_sdk::reports::ReportError>(())
/// ```
pub fn write(name: &str, markdown: &str) -> Result<ReportRef, ReportError> {
    wit::write(name, markdown)
}
