//! Reading an original BSM directory: `data/agents/index.json` and the
//! agent YAML files it lists, `agents/registry.yaml`, and `data/knowledge/`.
//! The real files are tolerated as they are: Arabic text, numeric or string
//! versions, missing `actions`, and fields this host does not use.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize};

/// One agent definition (`data/agents/<id>.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentDefinition {
    pub id: String,
    pub name: String,
    pub role: String,
    pub description: String,
    pub instructions: String,
    /// `1`, `1.0`, `"2.0.0"`: all read as text.
    #[serde(deserialize_with = "any_scalar_as_string")]
    pub version: String,
    pub model_provider: Option<String>,
    pub model_key: Option<String>,
    pub model_name: Option<String>,
    pub capabilities: Vec<String>,
    /// Absent in some agents: they emit no actions.
    pub actions: Vec<String>,
    /// Governance fields some definitions carry themselves.
    pub contexts: Option<Contexts>,
    pub risk: Option<Risk>,
    pub approval: Option<Approval>,
    /// `json`: the agent answers with a structured verdict (asked for in its
    /// prompt, JSON mode where the provider supports it). Not in the
    /// original format; agents without it answer in words.
    pub verdict: Option<String>,
}

/// The governance registry (`agents/registry.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryFile {
    #[serde(deserialize_with = "any_scalar_as_string")]
    pub version: String,
    pub agents: Vec<RegistryEntry>,
}

/// One registry entry: the governance of one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryEntry {
    pub id: String,
    pub name: String,
    pub category: String,
    pub role: String,
    pub contexts: Option<Contexts>,
    pub risk: Option<Risk>,
    pub approval: Option<Approval>,
    pub startup: Option<Startup>,
    pub healthcheck: Option<Healthcheck>,
    pub expose: Option<Expose>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contexts {
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Risk {
    pub level: String,
    pub rationale: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Approval {
    pub required: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Startup {
    pub auto_start: bool,
    pub allowed_profiles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Healthcheck {
    pub endpoint: String,
    pub interval_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Expose {
    pub selectable: bool,
    pub internal_only: bool,
}

fn any_scalar_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = serde_yaml_ng::Value::deserialize(d)?;
    Ok(match value {
        serde_yaml_ng::Value::String(s) => s,
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Null => String::new(),
        other => serde_yaml_ng::to_string(&other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

#[derive(Deserialize)]
struct AgentIndex {
    agents: Vec<String>,
}

/// An agent file of the index that could not be read as a definition. It
/// is reported (and its agent quarantined), never a reason to refuse the
/// other agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokenAgent {
    /// The id the file names (its `id:` if readable, else the file stem).
    pub id: String,
    pub file: PathBuf,
    pub problem: String,
}

/// An original BSM directory, read.
#[derive(Debug, Clone)]
pub struct BsmLayout {
    pub root: PathBuf,
    /// In index order.
    pub agents: Vec<AgentDefinition>,
    /// Files of the index that are not valid agent definitions.
    pub broken: Vec<BrokenAgent>,
    /// Registry entries in file order (empty when there is no registry file).
    pub registry: Vec<RegistryEntry>,
    /// `data/knowledge`, when it exists.
    pub knowledge_dir: Option<PathBuf>,
}

impl BsmLayout {
    /// Reads the layout under `root`. A missing or invalid index is an error
    /// (naming the file and what is wrong); an agent file that cannot be
    /// read is listed in [`BsmLayout::broken`] and the others still load.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let agents_dir = root.join("data/agents");
        let index_path = agents_dir.join("index.json");
        let index: AgentIndex = serde_json::from_slice(
            &std::fs::read(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?,
        )
        .with_context(|| format!("{} is not {{\"agents\": [...]}}", index_path.display()))?;

        let mut agents = Vec::new();
        let mut broken = Vec::new();
        for file in &index.agents {
            let path = agents_dir.join(file);
            match read_definition(&agents_dir, file) {
                Ok(def) => agents.push(def),
                Err(problem) => broken.push(BrokenAgent {
                    id: Path::new(file)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| file.clone()),
                    file: path,
                    problem,
                }),
            }
        }

        let registry_path = root.join("agents/registry.yaml");
        let registry = if registry_path.is_file() {
            let text = std::fs::read_to_string(&registry_path)?;
            parse_registry(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a valid registry: {e}", registry_path.display())
            })?
        } else {
            Vec::new()
        };

        let knowledge = root.join("data/knowledge");
        Ok(Self {
            root: root.to_path_buf(),
            agents,
            broken,
            registry,
            knowledge_dir: knowledge.join("index.json").is_file().then_some(knowledge),
        })
    }

    /// The registry entry of an agent.
    pub fn registry_entry(&self, id: &str) -> Option<&RegistryEntry> {
        self.registry.iter().find(|e| e.id == id)
    }
}

/// Reads one agent file named by the index; the error says what is wrong
/// in one line, for the quarantine list.
fn read_definition(agents_dir: &Path, file: &str) -> Result<AgentDefinition, String> {
    if !Path::new(file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("agent file {file:?} leaves the agents directory"));
    }
    let path = agents_dir.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_definition(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses an agent definition (YAML); the error says what is wrong in one
/// line. Untrusted text: never panics.
pub fn parse_definition(text: &str) -> Result<AgentDefinition, String> {
    let mut def: AgentDefinition =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a valid agent definition: {e}"))?;
    if def.id.trim().is_empty() {
        return Err("the agent has no id".into());
    }
    if def.name.trim().is_empty() {
        def.name = def.id.clone();
    }
    Ok(def)
}

/// Parses the governance registry (`agents/registry.yaml`). Untrusted
/// text: never panics.
pub fn parse_registry(text: &str) -> Result<Vec<RegistryEntry>, String> {
    serde_yaml_ng::from_str::<RegistryFile>(text)
        .map(|file| file.agents)
        .map_err(|e| e.to_string())
}
