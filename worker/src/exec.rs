//! `cobble-worker exec`: runs one unit locally in exactly the sandbox and
//! limits a real unit gets, so researchers can test a module before they
//! submit it, and benchmarks can time the real execution path.

use crate::error::{Error, Result};
use cobble_sandbox::{
    EngineSettings, Invocation, Origin, RunReport, Sandbox, UnitControl, UnitLimits,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub module: PathBuf,
    /// Files placed at `/input/<name>`; a name may hold folders, as a
    /// reduce unit's `INDEX/stdout` does.
    pub inputs: Vec<(String, PathBuf)>,
    pub args: Vec<String>,
    /// Variables the unit sees, as a job's `env`.
    pub env: Vec<(String, String)>,
    pub limits: UnitLimits,
    /// Where `/output` is kept; a temporary directory when None.
    pub output_dir: Option<PathBuf>,
    /// Where `/checkpoint` is kept; none offered when None. Running `exec`
    /// twice with the same directory resumes from the unit's checkpoint.
    pub checkpoint_dir: Option<PathBuf>,
    pub seed: [u8; 32],
    /// As a job's `[engine] nan_canonicalization`.
    pub nan_canonicalization: bool,
    /// Where compiled modules are kept between runs, as a worker keeps
    /// them (`module_cache_dir`); None compiles every time.
    pub module_cache: Option<PathBuf>,
}

/// `$XDG_CACHE_HOME/cobble/modules`, else `$HOME/.cache/cobble/modules`.
pub fn module_cache_dir() -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let base = absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("cobble").join("modules"))
}

/// What `exec` measured besides the unit's own report.
#[derive(Debug)]
pub struct ExecReport {
    pub run: RunReport,
    /// Compiling, or loading the compiled module from the cache.
    pub compile: Duration,
    pub origin: Origin,
    pub output_dir: PathBuf,
}

pub async fn exec(request: ExecRequest) -> Result<ExecReport> {
    let settings = EngineSettings {
        nan_canonicalization: request.nan_canonicalization,
        ..EngineSettings::default()
    };
    // A cache that cannot be made (a read-only home) costs only speed.
    let cache = request
        .module_cache
        .clone()
        .filter(|dir| match std::fs::create_dir_all(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not caching compiled modules in {}: {e}", dir.display());
                false
            }
        });
    let sandbox = Sandbox::with_settings(cache, settings)?;
    let bytes = std::fs::read(&request.module)
        .map_err(Error::io(format!("reading {}", request.module.display())))?;
    let compile_started = Instant::now();
    let (prepared, origin) = sandbox.prepare_read(&cobble_core::BlobHash::of(&bytes), &bytes)?;
    drop(bytes);
    let compile = compile_started.elapsed();

    let scratch = std::env::temp_dir().join(format!("cobble-exec-{}", cobble_core::random_token()));
    let input_dir = scratch.join("input");
    let output_dir = request
        .output_dir
        .clone()
        .unwrap_or_else(|| scratch.join("output"));
    for dir in [&input_dir, &output_dir] {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let result = async {
        for (name, path) in &request.inputs {
            // The check a manifest's names pass: nothing lands outside /input.
            if !cobble_core::manifest::is_input_path(name) {
                return Err(Error::Io {
                    context: format!("input {}", path.display()),
                    source: std::io::Error::other(format!(
                        "{name:?} is not a name under /input: plain parts, at most 4 levels"
                    )),
                });
            }
            let target = input_dir.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("creating {}", parent.display())))?;
            }
            crate::runner::link_input(path, &target)?;
        }
        let report = sandbox
            .run(
                &prepared,
                Invocation {
                    args: &request.args,
                    env: &request.env,
                    input_dir: &input_dir,
                    output_dir: &output_dir,
                    checkpoint_dir: request.checkpoint_dir.as_deref(),
                    stdin: Vec::new(),
                    seed: request.seed,
                    limits: request.limits,
                    control: UnitControl::unpaused(),
                },
            )
            .await?;
        Ok::<_, Error>(report)
    }
    .await;
    std::fs::remove_dir_all(&input_dir).ok();
    if request.output_dir.is_none() && std::fs::remove_dir(&output_dir).is_ok() {
        // Nothing was written: leave nothing behind in the temp directory.
        std::fs::remove_dir(&scratch).ok();
    }
    Ok(ExecReport {
        run: result?,
        compile,
        origin,
        output_dir,
    })
}

/// The output digest a coordinator computes for this run's result (stdout
/// and files by hash and size): what a job's `[spot_check]` known answer
/// is, so a researcher gets it from a trusted local run.
pub fn output_digest(run: &RunReport) -> Result<[u8; 32]> {
    let blob = |hash: blake3::Hash, size: u64| cobble_proto::v1::BlobRef {
        hash: hash.as_bytes().to_vec(),
        size,
        chunk_root: Vec::new(),
    };
    let stdout = blob(blake3::hash(&run.stdout), run.stdout.len() as u64);
    let mut files = Vec::with_capacity(run.files.len());
    for file in &run.files {
        let mut hasher = blake3::Hasher::new();
        std::fs::File::open(&file.path)
            .and_then(|f| hasher.update_reader(f).map(|_| ()))
            .map_err(Error::io(format!("hashing output {}", file.path.display())))?;
        files.push(cobble_proto::v1::OutputFile {
            name: file.name.clone(),
            blob: Some(blob(hasher.finalize(), file.size)),
        });
    }
    Ok(cobble_core::output::digest(&stdout, &files))
}
