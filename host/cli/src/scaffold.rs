//! `bsm plugin new`: a plugin crate that builds, tests and installs from
//! the first minute. The templates live in `host/cli/templates/`, compiled
//! into the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Which plugin world the new crate exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Answers one input (may call the LLM and emit actions).
    Agent,
    /// Decides over the agents' results of a pipeline.
    Step,
}

/// Where the new crate finds the SDK and the test harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A checkout of BSM on this machine (its root, holding `sdk/` and
    /// `harness/`).
    Path(PathBuf),
    /// A git repository holding both crates.
    Git(String),
}

/// The BSM checkout this `bsm` was built from, if it is still there.
pub fn built_from() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().ok()?;
    (root.join("sdk/Cargo.toml").is_file() && root.join("harness/Cargo.toml").is_file())
        .then_some(root)
}

/// The host this `bsm` runs on, for the tests' `--target`.
pub const HOST_TARGET: &str = env!("BSM_HOST_TARGET");

const CARGO_TOML: &str = include_str!("../templates/common/Cargo.toml");
const CARGO_CONFIG: &str = include_str!("../templates/common/cargo-config.toml");
const README: &str = include_str!("../templates/common/README.md");
const GITIGNORE: &str = include_str!("../templates/common/gitignore");
const AGENT_LIB: &str = include_str!("../templates/agent/lib.rs");
const AGENT_MANIFEST: &str = include_str!("../templates/agent/plugin.toml");
const AGENT_TEST: &str = include_str!("../templates/agent/test.rs");
const STEP_LIB: &str = include_str!("../templates/step/lib.rs");
const STEP_MANIFEST: &str = include_str!("../templates/step/plugin.toml");
const STEP_TEST: &str = include_str!("../templates/step/test.rs");

/// Checks a plugin name: it becomes the crate name, the plugin id and a
/// directory name, so lowercase letters, digits and single dashes only.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (2..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "{name:?} is not a plugin name: use 2-64 lowercase letters, digits and single dashes, starting with a letter (e.g. release-notes)"
        );
    }
    Ok(())
}

/// Writes a new plugin crate `name` of `kind` into `dir` (which must not
/// exist, or be empty). Returns the files written, relative to `dir`.
pub fn create(
    name: &str,
    kind: Kind,
    dir: &Path,
    sdk: &SdkSource,
    lock_from: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} already exists and is not empty: choose another --dir or name",
                dir.display()
            );
        }
    }
    let (lib, manifest, test, description) = match kind {
        Kind::Agent => (
            AGENT_LIB,
            AGENT_MANIFEST,
            AGENT_TEST,
            "An agent that answers through the host's LLM.",
        ),
        Kind::Step => (
            STEP_LIB,
            STEP_MANIFEST,
            STEP_TEST,
            "A decision step over the agents' results.",
        ),
    };
    let (sdk_dependency, harness_dependency) = match sdk {
        SdkSource::Path(root) => (
            format!(
                "bsm-sdk = {{ path = {:?} }}",
                root.join("sdk").display().to_string()
            ),
            format!(
                "bsm-harness = {{ path = {:?} }}",
                root.join("harness").display().to_string()
            ),
        ),
        SdkSource::Git(url) => (
            format!("bsm-sdk = {{ git = {url:?} }}"),
            format!("bsm-harness = {{ git = {url:?} }}"),
        ),
    };
    let values = [
        ("{{name}}", name.to_string()),
        ("{{id}}", name.to_string()),
        ("{{crate}}", name.replace('-', "_")),
        ("{{type_name}}", type_name(name)),
        ("{{title}}", title(name)),
        ("{{description}}", description.to_string()),
        (
            "{{kind}}",
            match kind {
                Kind::Agent => "agent",
                Kind::Step => "step",
            }
            .to_string(),
        ),
        ("{{sdk_dependency}}", sdk_dependency),
        ("{{harness_dependency}}", harness_dependency),
        ("{{host_target}}", HOST_TARGET.to_string()),
    ];
    let fill = |template: &str| {
        values
            .iter()
            .fold(template.to_string(), |text, (key, value)| {
                text.replace(key, value)
            })
    };
    let files: Vec<(&str, String)> = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", fill(CARGO_CONFIG)),
        (".gitignore", GITIGNORE.to_string()),
        ("README.md", fill(README)),
        ("plugin.toml", fill(manifest)),
        ("src/lib.rs", fill(lib)),
        ("tests/plugin.rs", fill(test)),
    ];
    let mut written = Vec::new();
    for (path, text) in &files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&full, text).with_context(|| format!("cannot write {}", full.display()))?;
        written.push(PathBuf::from(path));
    }
    // The dependency versions BSM itself was tested with: the first build
    // needs nothing new, and resolves the same everywhere.
    if let Some(lock) = lock_from.filter(|l| l.is_file()) {
        std::fs::copy(lock, dir.join("Cargo.lock"))
            .with_context(|| format!("cannot copy {}", lock.display()))?;
        written.push(PathBuf::from("Cargo.lock"));
    }
    Ok(written)
}

/// `release-notes` -> `ReleaseNotes`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `release-notes` -> `Release notes`.
fn title(name: &str) -> String {
    let words = name.replace('-', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_written() {
        for bad in [
            "", "A", "Release", "1st", "a_b", "a--b", "a-", "x/../y", "a b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["ab", "release-notes", "agent2"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn a_non_empty_directory_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let sdk = SdkSource::Git("https://example.invalid/bsm".into());
        let err = create("my-agent", Kind::Agent, dir.path(), &sdk, None).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn every_placeholder_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, sub) in [(Kind::Agent, "a"), (Kind::Step, "s")] {
            let out = dir.path().join(sub);
            let sdk = SdkSource::Git("https://example.invalid/bsm".into());
            let files = create("release-notes", kind, &out, &sdk, None).unwrap();
            for file in files {
                let text = std::fs::read_to_string(out.join(&file)).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    file.display()
                );
            }
            let lib = std::fs::read_to_string(out.join("src/lib.rs")).unwrap();
            assert!(lib.contains("struct ReleaseNotes;"), "{lib}");
            let cargo = std::fs::read_to_string(out.join("Cargo.toml")).unwrap();
            assert!(cargo.contains("bsm-sdk = { git = \"https://example.invalid/bsm\" }"));
        }
    }
}
