//! Builds every plugin crate of the workspace (`plugins/*`, `tests/plugins/*`)
//! for `wasm32-wasip2`, so that a plain `cargo build`/`cargo test` also
//! produces the components the host runs. Plugins are never checked in as
//! `.wasm`.
//!
//! Output: `$OUT_DIR/plugins/shipped/` and `$OUT_DIR/plugins/test/`, each
//! holding `<id>.wasm` beside its `<id>.toml` manifest; their paths reach the
//! host as `BSM_SHIPPED_PLUGINS_DIR` and `BSM_TEST_PLUGINS_DIR`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// A plugin crate to build, and where its output goes.
struct Guest {
    dir: PathBuf,
    package: String,
    group: &'static str,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("host/cli lives two levels below the workspace root")
        .to_path_buf();
    for watched in ["wit", "sdk", "plugins", "tests/plugins", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    // The host triple, for `bsm plugin test` (the tests run here, natively).
    println!(
        "cargo:rustc-env=BSM_HOST_TARGET={}",
        env::var("TARGET").unwrap()
    );

    let mut guests = find_guests(&root.join("plugins"), "shipped");
    guests.extend(find_guests(&root.join("tests/plugins"), "test"));

    require_wasm_target();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    build(&root, &target_dir, &guests);

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("plugins");
    let built = target_dir.join(TARGET).join(PROFILE);
    for guest in &guests {
        install(guest, &built, &out.join(guest.group));
    }
    println!(
        "cargo:rustc-env=BSM_SHIPPED_PLUGINS_DIR={}",
        out.join("shipped").display()
    );
    println!(
        "cargo:rustc-env=BSM_TEST_PLUGINS_DIR={}",
        out.join("test").display()
    );

    let js = root.join("examples/js-agent");
    for watched in [
        "agent.js",
        "wit/world.wit",
        "package-lock.json",
        "pr-summary-js.toml",
    ] {
        println!("cargo:rerun-if-changed={}", js.join(watched).display());
    }
    build_js_agent(&js, &target_dir.join("js"), &out.join("js"));
    println!(
        "cargo:rustc-env=BSM_JS_PLUGINS_DIR={}",
        out.join("js").display()
    );
}

/// Builds the JavaScript example agent with componentize-js (installed by
/// `npm ci --prefix examples/js-agent`, part of README's test command).
/// Without it, a warning: the host builds and runs without the example,
/// and the tests that need it say how to get it.
fn build_js_agent(source: &Path, build_dir: &Path, out: &Path) {
    fs::create_dir_all(out).unwrap();
    let tool = source.join("node_modules/.bin/componentize-js");
    if !tool.is_file() {
        println!(
            "cargo:warning=the JavaScript example agent is not built: run `npm ci --prefix examples/js-agent` first"
        );
        return;
    }
    fs::create_dir_all(build_dir).unwrap();
    let wasm = build_dir.join("pr-summary-js.wasm");
    let inputs = ["agent.js", "wit/world.wit", "package-lock.json"].map(|f| source.join(f));
    let newest_input = inputs
        .iter()
        .chain(std::iter::once(&root_wit(source)))
        .filter_map(|p| newest_mtime(p))
        .max();
    let built = fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    if built.is_none() || newest_input.is_some_and(|input| Some(input) > built) {
        let output = Command::new(&tool)
            .current_dir(source)
            .args([
                "--wit",
                "wit",
                "--world-name",
                "agent",
                "--disable",
                "http",
                "--disable",
                "fetch-event",
                "-o",
            ])
            .arg(&wasm)
            .arg("agent.js")
            .output()
            .expect("running componentize-js");
        if !output.status.success() {
            panic!(
                "\n\nBuilding the JavaScript example agent failed:\n{}{}\n",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    copy_if_changed(&wasm, &out.join("pr-summary-js.wasm"));
    copy_if_changed(
        &source.join("pr-summary-js.toml"),
        &out.join("pr-summary-js.toml"),
    );
}

/// The repository's wit/ directory the example's world depends on.
fn root_wit(source: &Path) -> PathBuf {
    source.join("../../wit")
}

/// The newest modification time of a file, or of the files of a directory.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

fn find_guests(dir: &Path, group: &'static str) -> Vec<Guest> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut guests: Vec<Guest> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|dir| {
            let package = package_name(&dir.join("Cargo.toml"));
            Guest {
                dir,
                package,
                group,
            }
        })
        .collect();
    guests.sort_by(|a, b| a.package.cmp(&b.package));
    guests
}

fn package_name(cargo_toml: &Path) -> String {
    let text = fs::read_to_string(cargo_toml).unwrap();
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("name")?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{}: no package name", cargo_toml.display()))
}

/// Fails with the fix when the `wasm32-wasip2` standard library is missing,
/// instead of letting cargo print a page about `core` not being found.
fn require_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if !lib.is_dir() {
        panic!(
            "\n\nThe Rust target `{TARGET}` is not installed, and BSM builds its plugins for it.\n\
             Install it with:\n\n    rustup target add {TARGET}\n\n"
        );
    }
}

fn build(root: &Path, target_dir: &Path, guests: &[Guest]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
            "--target-dir",
        ])
        .arg(target_dir);
    for guest in guests {
        cmd.args(["-p", &guest.package]);
    }
    // A clean environment: the outer build's flags, wrappers (clippy) and
    // target settings are for the host, not for the plugins. The jobserver
    // (CARGO_MAKEFLAGS) is kept so both builds share the machine's cores.
    cmd.env_clear();
    for keep in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "TMPDIR",
        "RUSTC",
    ] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let output = cmd
        .output()
        .expect("running cargo to build the WASM plugins");
    if !output.status.success() {
        panic!(
            "\n\nBuilding the WASM plugins failed:\n{}\n",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Copies a built component (and its manifest) into the plugins directory of
/// its group, skipping the copy when nothing changed.
fn install(guest: &Guest, built: &Path, out: &Path) {
    fs::create_dir_all(out).unwrap();
    let artifact = built.join(format!("{}.wasm", guest.package.replace('-', "_")));
    let artifact = if artifact.is_file() {
        artifact
    } else {
        built.join(format!("{}.wasm", guest.package))
    };
    let manifest = guest.dir.join("plugin.toml");
    let id = if manifest.is_file() {
        manifest_id(&manifest)
    } else {
        guest.package.clone()
    };
    copy_if_changed(&artifact, &out.join(format!("{id}.wasm")));
    if manifest.is_file() {
        copy_if_changed(&manifest, &out.join(format!("{id}.toml")));
    }
}

fn manifest_id(manifest: &Path) -> String {
    let text = fs::read_to_string(manifest).unwrap();
    text.lines()
        .find_map(|l| {
            let rest = l
                .trim()
                .strip_prefix("id")?
                .trim_start()
                .strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{}: no `id`", manifest.display()))
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if fs::read(to).map(|old| old == new).unwrap_or(false) {
        return;
    }
    let tmp = to.with_extension("tmp");
    fs::write(&tmp, &new).unwrap();
    fs::rename(&tmp, to).unwrap();
}
