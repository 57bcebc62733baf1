//! Host secrets: API tokens and signing keys that plugins use by name and
//! never see (`[secrets]`: each from an environment variable or an
//! owner-only file, never from the configuration file itself or a flag).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Where one secret comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable holding the value.
    pub env: Option<String>,
    /// A file holding the value (trimmed); it must not be readable or
    /// writable by others.
    pub file: Option<PathBuf>,
}

/// The resolved secrets, by name. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, SecretString>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Resolves every configured secret. A variable that is not set is left
    /// out with a warning (plugins using it are told it is unavailable); a
    /// file others can read, or a source that is neither, is an error.
    pub fn resolve(sources: &BTreeMap<String, SecretSource>) -> anyhow::Result<Self> {
        let mut out = BTreeMap::new();
        for (name, source) in sources {
            let value = match (&source.env, &source.file) {
                (Some(var), None) => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => v,
                    _ => {
                        tracing::warn!(secret = %name, variable = %var, "the secret's environment variable is not set; plugins using it get `unavailable`");
                        continue;
                    }
                },
                (None, Some(path)) => read_secret_file(path)?,
                _ => anyhow::bail!(
                    "[secrets] {name}: give exactly one of `env = \"VARIABLE\"` or `file = \"/path\"`"
                ),
            };
            out.insert(name.clone(), value.into());
        }
        Ok(Self(out))
    }

    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// A set of secrets given in code (tests, embedding).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k, v.into())).collect())
    }
}

/// Reads a secret from a file that only its owner may read and write.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            anyhow::bail!(
                "refusing the secret file {}: others may read or change it (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let secret = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    let secret = secret.trim();
    if secret.is_empty() {
        anyhow::bail!("the secret file {} is empty", path.display());
    }
    Ok(secret.to_string())
}
