//! The checkout xtask works in, found when it runs (not when it was compiled): paths in presets
//! (`data/…`, `results/…`) and the folder emitted Slurm scripts `cd` into are relative to it.

use std::path::{Path, PathBuf};

/// The workspace root of the checkout this command runs for:
/// 1. `CARGO_MANIFEST_DIR` of the running process (set by `cargo run`, so `cargo xtask …` gives
///    the checkout cargo was invoked in) — xtask's folder, whose parent is the root;
/// 2. else the first folder above the current one that holds `xtask/Cargo.toml` and a
///    `Cargo.toml` (a binary run directly from inside a checkout);
/// 3. else the checkout the binary was compiled in.
///
/// With a target folder shared by two checkouts, the binary last built may come from the other
/// one; 1 and 2 make it work in the one it is run from.
pub(crate) fn root() -> PathBuf {
    let from_manifest = |dir: &Path| dir.parent().map(Path::to_path_buf);
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) {
        if dir.join("Cargo.toml").is_file() {
            if let Some(root) = from_manifest(&dir) {
                return root;
            }
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(root) = cwd
            .ancestors()
            .find(|d| d.join("Cargo.toml").is_file() && d.join("xtask/Cargo.toml").is_file())
        {
            return root.to_path_buf();
        }
    }
    from_manifest(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_holds_the_workspace_manifest_and_xtask() {
        let root = super::root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(
            root.join("xtask/Cargo.toml").is_file(),
            "{}",
            root.display()
        );
    }
}
