//! Compatibility with the original BSM: its on-disk layout (agent YAML
//! files, the governance registry, knowledge documents), its governance
//! rules, and its agents as instances of the `prompt-agent` plugin.

pub mod agents;
pub mod governance;
pub mod knowledge;
pub mod layout;

pub use governance::{Governance, Violation};
pub use layout::BsmLayout;
