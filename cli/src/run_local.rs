//! `cobble run-local`: a job's first units and its reduce step, run on
//! this machine in the sandbox volunteers use (`cobble-worker exec`'s), so
//! a researcher sees a script's mistakes, fuel and time before submitting.

use anyhow::{Context, bail};
use cobble_core::runtime::Runtime;
use cobble_core::spec::{self, LocalJob};
use cobble_proto::v1 as pb;
use cobble_sandbox::UnitLimits;
use cobble_worker::exec::{ExecReport, ExecRequest, exec};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Left in the output folder, so a later run replaces only a folder this
/// command made, never one of the researcher's.
const MARKER: &str = ".cobble-run-local";

/// Lines of a unit's stdout printed; the rest is in its file.
const SHOWN_LINES: usize = 20;

pub struct Options {
    pub spec: PathBuf,
    pub units: usize,
    /// Default: `run-local/` beside the spec.
    pub out: Option<PathBuf>,
    /// The CPython module, for jobs on the Python runtime.
    pub python_runtime: Option<PathBuf>,
}

/// Runs the units and the reduce step; false if any failed.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let job = LocalJob::load(&options.spec)?;
    let base = options.spec.parent().unwrap_or(Path::new("."));
    let out = options.out.unwrap_or_else(|| base.join("run-local"));
    fresh_output(&out)?;
    let module = match (&job.module, job.runtime) {
        (Some(module), _) => module.clone(),
        (None, Some(runtime)) => runtime_module(runtime, options.python_runtime.as_deref())?,
        (None, None) => bail!("the job names neither a module nor a runtime"),
    };

    // The units exactly as the coordinator would split them: each file
    // stands in for its blob by a token of its path.
    let mut paths: HashMap<Vec<u8>, PathBuf> = HashMap::new();
    let wire = job.to_spec(|path| {
        let hash = blake3::hash(path.as_os_str().as_encoded_bytes())
            .as_bytes()
            .to_vec();
        paths.insert(hash.clone(), path.to_path_buf());
        Ok::<_, anyhow::Error>(pb::BlobRef {
            hash,
            size: 0,
            chunk_root: Vec::new(),
        })
    })?;
    let local = |inputs: &[pb::NamedBlob]| -> anyhow::Result<Vec<(String, PathBuf)>> {
        inputs
            .iter()
            .map(|input| {
                let path = input
                    .blob
                    .as_ref()
                    .and_then(|blob| paths.get(&blob.hash))
                    .with_context(|| format!("input {:?} has no file", input.name))?;
                Ok((input.name.clone(), path.clone()))
            })
            .collect()
    };
    let plans = spec::split(&wire);
    let total = plans.len();
    let limits = UnitLimits::from_proto(
        &job.limits,
        Duration::from_secs(u64::from(job.limits.deadline_s)),
    );
    let runs = plans.len().min(options.units);
    println!(
        "running {runs} of the job's {total} units{} in the sandbox; outputs in {}",
        if job.reduce.is_some() {
            ", then its reduce step,"
        } else {
            ""
        },
        out.display()
    );
    let mut outputs: Vec<(String, PathBuf)> = Vec::new();
    let mut failed = false;
    for plan in plans.into_iter().take(runs) {
        let dir = out.join(plan.index.to_string());
        let report = exec_unit(
            &format!("unit {}", plan.index),
            ExecRequest {
                module: module.clone(),
                inputs: local(&plan.inputs)?,
                args: plan.args.clone(),
                env: job.env.clone(),
                limits,
                output_dir: Some(dir.clone()),
                checkpoint_dir: None,
                seed: seed(plan.index),
                nan_canonicalization: job.nan_canonicalization,
                module_cache: cobble_worker::exec::module_cache_dir(),
            },
        )
        .await?;
        if report.run.outcome.is_err() {
            failed = true;
            continue;
        }
        // The reduce unit reads each unit's stdout and files under INDEX/.
        outputs.push((format!("{}/stdout", plan.index), dir.join("stdout")));
        for file in &report.run.files {
            outputs.push((format!("{}/{}", plan.index, file.name), file.path.clone()));
        }
    }
    let Some(reduce) = &job.reduce else {
        return Ok(!failed);
    };
    if failed {
        println!("no reduce step: a unit failed, and a job whose unit fails gets none");
        return Ok(false);
    }
    let reduce_module = match (&reduce.module, reduce.runtime) {
        (Some(module), _) => module.clone(),
        (None, Some(runtime)) => runtime_module(runtime, options.python_runtime.as_deref())?,
        (None, None) => module,
    };
    let mut inputs = local(&wire.inputs)?;
    inputs.extend(reduce.inputs.iter().cloned());
    inputs.extend(outputs);
    // The coordinator's own check: where it would error the reduce unit
    // (a unit wrote a file named stdout), so does this run.
    if let Err(problem) =
        cobble_core::manifest::check_input_names(inputs.iter().map(|(n, _)| n.as_str()))
    {
        println!("no reduce step: the units' outputs cannot all be its inputs: {problem}");
        return Ok(false);
    }
    if runs < total {
        println!(
            "the reduce step reads the outputs of these {runs} units; submitted, it reads all {total}"
        );
    }
    let report = exec_unit(
        "reduce",
        ExecRequest {
            module: reduce_module,
            inputs,
            args: reduce.args.clone(),
            env: reduce.env(&job.env),
            limits,
            output_dir: Some(out.join("reduce")),
            checkpoint_dir: None,
            seed: seed(u32::MAX),
            nan_canonicalization: job.nan_canonicalization,
            module_cache: cobble_worker::exec::module_cache_dir(),
        },
    )
    .await?;
    Ok(report.run.outcome.is_ok())
}

/// Runs one unit, keeps its stdout beside its files and says how it went:
/// outcome, fuel, time, its first lines, and a failure's stderr verbatim.
async fn exec_unit(label: &str, request: ExecRequest) -> anyhow::Result<ExecReport> {
    let args = request.args.join(" ");
    let report = exec(request)
        .await
        .with_context(|| format!("{label}: cannot run it"))?;
    let run = &report.run;
    std::fs::write(report.output_dir.join("stdout"), &run.stdout)
        .with_context(|| format!("writing {}", report.output_dir.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n{label} [{args}]: {}, fuel {}, {:.3} s{}",
        match &run.outcome {
            Ok(()) => "ok".to_string(),
            Err(failure) => format!("FAILED ({}: {failure})", failure.kind()),
        },
        run.fuel_used,
        run.elapsed.as_secs_f64(),
        match report.origin {
            cobble_sandbox::Origin::Compiled => {
                format!(
                    " (compiling the module: {:.1} s)",
                    report.compile.as_secs_f64()
                )
            }
            cobble_sandbox::Origin::Disk | cobble_sandbox::Origin::Memory => String::new(),
        }
    )?;
    let text = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().take(SHOWN_LINES) {
        writeln!(out, "  {line}")?;
    }
    if lines.len() > SHOWN_LINES {
        writeln!(
            out,
            "  ... {} more lines in {}",
            lines.len() - SHOWN_LINES,
            report.output_dir.join("stdout").display()
        )?;
    }
    for file in &run.files {
        writeln!(out, "  wrote {} ({} bytes)", file.path.display(), file.size)?;
    }
    if run.outcome.is_err() {
        // What the researcher would read in `cobble status`: the stderr.
        writeln!(out, "  stderr:")?;
        for line in String::from_utf8_lossy(&run.stderr).lines() {
            writeln!(out, "  | {line}")?;
        }
    }
    Ok(report)
}

/// A fixed seed per unit: a local run draws the same numbers every time.
fn seed(index: u32) -> [u8; 32] {
    blake3::derive_key("cobble run-local seed v1", &index.to_le_bytes())
}

/// Makes `out` empty: a new folder, or one an earlier run made.
fn fresh_output(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let ours = out.join(MARKER).is_file();
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("{} is not a readable folder", out.display()))?
            .next()
            .is_none();
        if !ours && !empty {
            bail!(
                "{} holds files run-local did not write; give another folder with --out",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join(MARKER),
        "made by `cobble run-local`; replaced by the next run\n",
    )?;
    Ok(())
}

/// The runtime's module on this machine: the file given, else where
/// `cargo xtask setup` leaves it beside this program's build, checked
/// against its pinned SHA-256 either way.
fn runtime_module(runtime: &Runtime, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let beside_build = std::env::current_exe().ok().and_then(|exe| {
                Some(
                    exe.parent()?
                        .parent()?
                        .join("third-party")
                        .join(runtime.file),
                )
            });
            match beside_build.filter(|path| path.is_file()) {
                Some(path) => path,
                None => bail!(
                    "this job runs on the {} runtime: give its module with --{}-runtime FILE ({}, SHA-256 {}); in a Cobble checkout, `cargo xtask setup` fetches it into target/third-party/",
                    runtime.name,
                    runtime.name,
                    runtime.source,
                    runtime.sha256
                ),
            }
        }
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    runtime
        .check(&bytes)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
    Ok(path)
}
