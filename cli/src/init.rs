//! `cobble init`: a working example job to start from, so a researcher's
//! first job is an edit, not a blank page.

use anyhow::{Context, bail};
use std::path::Path;

/// The Python example: an SIR epidemic model swept over its infection
/// rate, and a reduce step that tabulates and plots the sweep.
const PYTHON: &[(&str, &str)] = &[
    ("job.toml", include_str!("../templates/python/job.toml")),
    ("sir.py", include_str!("../templates/python/sir.py")),
    ("reduce.py", include_str!("../templates/python/reduce.py")),
    ("README.md", include_str!("../templates/python/README.md")),
];

/// Writes the Python example job into `dir`, which must be new or empty:
/// nothing of a researcher's is ever overwritten.
pub fn python(dir: &Path) -> anyhow::Result<()> {
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
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in PYTHON {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote a Python job to {}: job.toml, sir.py, reduce.py, README.md",
        dir.display()
    );
    Ok(())
}
