//! `cobble init`: a working example job to start from, so a researcher's
//! first job is an edit, not a blank page.

use anyhow::{Context, bail};
use std::path::Path;

/// An example job: its files, by name, and what to say once written.
pub struct Example {
    files: &'static [(&'static str, &'static str)],
    next: &'static str,
}

/// The Python example: an SIR epidemic model swept over its infection
/// rate, and a reduce step that tabulates and plots the sweep.
pub const PYTHON: Example = Example {
    files: &[
        ("job.toml", include_str!("../templates/python/job.toml")),
        ("sir.py", include_str!("../templates/python/sir.py")),
        ("reduce.py", include_str!("../templates/python/reduce.py")),
        ("README.md", include_str!("../templates/python/README.md")),
    ],
    next: "try it: cobble run-local job.toml",
};

/// The same model in Rust, built to a WASI module, whose reduce step is
/// the same module run with other arguments.
pub const RUST: Example = Example {
    files: &[
        ("job.toml", include_str!("../templates/rust/job.toml")),
        // Kept under another name here, so that Cargo never takes the
        // template for a package of this workspace.
        (
            "Cargo.toml",
            include_str!("../templates/rust/Cargo.toml.template"),
        ),
        ("src/main.rs", include_str!("../templates/rust/src/main.rs")),
        ("README.md", include_str!("../templates/rust/README.md")),
    ],
    next: "build it: cargo build --release --target wasm32-wasip1; then cobble run-local job.toml",
};

/// Writes `example` into `dir`, which must be new or empty: nothing of a
/// researcher's is ever overwritten.
pub fn write(example: &Example, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and is not a readable folder", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; give a new folder, so nothing in it is overwritten",
                dir.display()
            );
        }
    }
    for (name, text) in example.files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let names: Vec<&str> = example.files.iter().map(|(name, _)| *name).collect();
    println!(
        "wrote an example job to {}: {}\n{} (in {})",
        dir.display(),
        names.join(", "),
        example.next,
        dir.display()
    );
    Ok(())
}
