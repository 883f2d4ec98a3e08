//! Builds every guest in `guest-examples/` for `wasm32-wasip2` (release)
//! and writes a constant per guest holding its path, as wasmtime's
//! test-programs crate does. Runs once per test build; cargo reruns it only
//! when a guest, the SDK or the WIT contract changes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists");
    let guests = root.join("guest-examples");
    for dir in ["guest-examples", "sdk"] {
        rerun_if_changed_tree(&root.join(dir));
    }

    let target_dir = guests.join("target");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("run cargo for the guests");
    assert!(
        status.success(),
        "building guest-examples failed; is the target installed? `rustup target add wasm32-wasip2`"
    );

    let out_dir = target_dir.join("wasm32-wasip2/release");
    let metadata =
        std::fs::read_to_string(guests.join("Cargo.toml")).expect("read guest workspace");
    let mut consts = String::new();
    let mut names = Vec::new();
    for member in members(&metadata) {
        let package = std::fs::read_to_string(guests.join(&member).join("Cargo.toml"))
            .expect("read guest manifest");
        let name = package_name(&package).replace('-', "_");
        let wasm = out_dir.join(format!("{name}.wasm"));
        assert!(
            wasm.exists(),
            "guest {member} produced no {}",
            wasm.display()
        );
        consts.push_str(&format!(
            "/// `{}` built for wasm32-wasip2.\npub const {}: &str = {:?};\n",
            member,
            name.to_uppercase(),
            wasm.display().to_string()
        ));
        names.push(name.to_uppercase());
    }
    consts.push_str(&format!(
        "/// Every guest, by constant name and path.\npub const ALL: &[(&str, &str)] = &[{}];\n",
        names
            .iter()
            .map(|n| format!("({n:?}, {n})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("guests.rs");
    std::fs::write(out, consts).expect("write guests.rs");
}

fn members(workspace: &str) -> Vec<String> {
    let start = workspace
        .find("members = [")
        .expect("guest workspace lists members");
    let end = start + workspace[start..].find(']').expect("members list ends");
    workspace[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn package_name(manifest: &str) -> String {
    let line = manifest
        .lines()
        .find(|l| l.starts_with("name = "))
        .expect("guest manifest names its package");
    line.trim_start_matches("name = ")
        .trim_matches('"')
        .to_owned()
}

fn rerun_if_changed_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
