//! Job specs: the TOML file a researcher writes, and the checks that both the
//! `cobble` CLI (before uploading anything) and the coordinator (before
//! trusting anything) run on it.

use crate::Error;
use crate::runtime::Runtime;
use cobble_proto::v1::{self as pb, split_rule::Rule};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Replication used when the spec has no `[replication]` table: two hosts
/// must agree, as in most BOINC projects.
pub const DEFAULT_REPLICATION: pb::Replication = pb::Replication {
    min_quorum: 2,
    target_results: 2,
    max_total_results: 5,
    adaptive: None,
};
pub const DEFAULT_FUEL: u64 = 100_000_000_000;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
pub const DEFAULT_DEADLINE_S: u32 = 3_600;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 20;
/// wasm32 cannot address more than 4 GiB.
pub const MAX_MEMORY_MIB: u32 = 4_096;
pub const MAX_DEADLINE_S: u32 = 30 * 24 * 3_600;
pub const MAX_UNITS: u64 = 1_000_000;
/// A unit's stdout is held in the volunteer's memory up to this.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 30;
pub const MAX_REPLICAS: u32 = 100;
/// Known-answer units a job may carry, and hosts each may check.
pub const MAX_KNOWN_ANSWERS: usize = 1_000;
pub const MAX_KNOWN_ANSWER_COPIES: u32 = 1_000;
/// Hosts each known-answer unit checks when the spec does not say.
pub const DEFAULT_KNOWN_ANSWER_COPIES: u32 = 10;

/// The placeholders an argument template may use.
pub const PLACEHOLDERS: [&str; 4] = ["{start}", "{end}", "{index}", "{file}"];

/// A job spec as written in TOML, before its files are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecToml {
    name: String,
    module: Option<PathBuf>,
    /// A runtime the coordinator serves instead of a module: "python".
    runtime: Option<String>,
    /// With a runtime: the researcher's program, run as /input/<its name>.
    script: Option<PathBuf>,
    /// With `runtime = "python"`: zip files of modules or pure-Python
    /// wheels, put on `sys.path`.
    #[serde(default)]
    packages: Vec<PathBuf>,
    /// Variables every unit sees, signed in its manifest.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// The module's detached signature by the project's code-signing key;
    /// default `<module>.sig` when that file exists.
    module_signature: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    inputs: Vec<PathBuf>,
    split: SplitToml,
    replication: Option<ReplicationToml>,
    limits: Option<LimitsToml>,
    validator: Option<ValidatorToml>,
    engine: Option<EngineToml>,
    spot_check: Option<SpotCheckToml>,
    reduce: Option<ReduceToml>,
}

/// `[reduce]`: one more unit over every unit's validated output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReduceToml {
    /// A module of its own; default: the job's.
    module: Option<PathBuf>,
    module_signature: Option<PathBuf>,
    /// A script of its own, on `runtime` (default: the job's runtime).
    script: Option<PathBuf>,
    runtime: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpotCheckToml {
    copies: Option<u32>,
    units: Vec<KnownAnswerToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownAnswerToml {
    args: Vec<String>,
    digest: String,
    fuel: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineToml {
    nan_canonicalization: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidatorToml {
    kind: String,
    rel_tolerance: Option<f64>,
    abs_tolerance: Option<f64>,
    module: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitToml {
    range: Option<RangeToml>,
    files: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeToml {
    start: i64,
    end: i64,
    per_unit: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationToml {
    min_quorum: Option<u32>,
    target_results: Option<u32>,
    max_total_results: Option<u32>,
    adaptive: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsToml {
    fuel: Option<u64>,
    memory_mib: Option<u32>,
    deadline_s: Option<u32>,
    max_output_bytes: Option<u64>,
}

/// How a loaded job is split, with file paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalSplit {
    Range(pb::RangeSplit),
    /// One unit per file: (name under /input, path on this machine).
    Files(Vec<(String, PathBuf)>),
}

/// A job spec read from disk and checked, with every path resolved relative
/// to the spec file. Turning it into a [`pb::JobSpec`] needs the blobs' hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalJob {
    pub name: String,
    /// The researcher's module; none when the job names a runtime.
    pub module: Option<PathBuf>,
    /// `runtime = "python"`: the coordinator supplies the module, and the
    /// script is the first input and the first argument.
    pub runtime: Option<&'static Runtime>,
    pub args: Vec<String>,
    /// Variables every unit sees: the runtime's, then the spec's `env`.
    pub env: Vec<(String, String)>,
    /// (name under /input, path on this machine).
    pub inputs: Vec<(String, PathBuf)>,
    pub split: LocalSplit,
    pub replication: pb::Replication,
    pub limits: pb::Limits,
    pub validator: pb::Validator,
    /// `[validator] module`, for `kind = "module"`.
    pub validator_module: Option<PathBuf>,
    /// `[spot_check] units`: known-answer units.
    pub known_answers: Vec<pb::KnownAnswer>,
    /// `[spot_check] copies`: hosts each known-answer unit checks.
    pub known_answer_copies: u32,
    /// `[engine] nan_canonicalization`; true unless the spec turns it off.
    pub nan_canonicalization: bool,
    /// The module's signature by the project's code-signing key, from
    /// `module_signature` or `<module>.sig`.
    pub module_signature: Option<Vec<u8>>,
    /// `[reduce]`: the unit that assembles the job's result, if any.
    pub reduce: Option<LocalReduce>,
}

/// A job's `[reduce]` step, with its files resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReduce {
    /// A module of its own; none runs the job's module (or runtime).
    pub module: Option<PathBuf>,
    pub module_signature: Option<Vec<u8>>,
    /// A runtime other than the job's, which the coordinator serves as
    /// this unit's module; its script is the first argument.
    pub runtime: Option<&'static Runtime>,
    pub args: Vec<String>,
    /// Files of its own (its script), beside the job's shared inputs.
    pub inputs: Vec<(String, PathBuf)>,
}

impl LocalReduce {
    /// The variables the reduce unit sees: the job's, with its own
    /// runtime's added.
    pub fn env(&self, job_env: &[(String, String)]) -> Vec<(String, String)> {
        match self.runtime {
            Some(runtime) => runtime.with_env(job_env),
            None => job_env.to_vec(),
        }
    }
}

impl LocalJob {
    /// Reads and checks a job spec file.
    pub fn load(path: &Path) -> Result<LocalJob, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|error| match error {
            Error::Spec { message, .. } => Error::Spec {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks spec text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<LocalJob, Error> {
        let raw: SpecToml = toml::from_str(text).map_err(|e| Error::Spec {
            path: PathBuf::from("(text)"),
            message: e.to_string().trim_end().to_string(),
        })?;
        let (module, runtime, module_signature) = match (&raw.module, &raw.runtime) {
            (Some(module), None) => {
                if raw.script.is_some() || !raw.packages.is_empty() {
                    return Err(Error::field(
                        "script",
                        "`script` and `packages` go with `runtime = \"python\"`; a module reads its files from `inputs`",
                    ));
                }
                let module = wasm_module(base, module, "module")?;
                let signature = read_signature(base, &module, raw.module_signature.as_deref())?;
                (Some(module), None, signature)
            }
            (None, Some(name)) => {
                let runtime = runtime_named(name, "runtime", "version")?;
                if raw.module_signature.is_some() {
                    return Err(Error::field(
                        "module_signature",
                        "a job on a runtime has no module of its own to sign",
                    ));
                }
                (None, Some(runtime), None)
            }
            (Some(_), Some(_)) => {
                return Err(Error::field(
                    "runtime",
                    "give either `module` or `runtime`, not both",
                ));
            }
            (None, None) => {
                return Err(Error::field(
                    "module",
                    "missing: name a WASI module, or `runtime = \"python\"` and a `script`",
                ));
            }
        };
        let mut inputs = Vec::new();
        for input in &raw.inputs {
            inputs.push(local_file(base, input, "inputs")?);
        }
        let mut args = raw.args;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut script_arg = None;
        if let Some(runtime) = runtime {
            let script = raw.script.as_ref().ok_or_else(|| {
                Error::field(
                    "script",
                    "missing: the program to run, e.g. script = \"analysis.py\"",
                )
            })?;
            let (name, path) = local_file(base, script, "script")?;
            script_arg = Some(format!("/input/{name}"));
            args.insert(0, format!("/input/{name}"));
            inputs.push((name, path));
            let mut python_path = Vec::new();
            for package in &raw.packages {
                let (name, path) = local_file(base, package, "packages")?;
                if !(name.ends_with(".zip") || name.ends_with(".whl")) {
                    return Err(Error::field(
                        "packages",
                        format!(
                            "{name:?}: give a .zip of modules or a pure-Python .whl (a folder: zip it first)"
                        ),
                    ));
                }
                python_path.push(format!("/input/{name}"));
                inputs.push((name, path));
            }
            env.extend(
                runtime
                    .env
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string())),
            );
            if !python_path.is_empty() {
                env.push(("PYTHONPATH".to_string(), python_path.join(":")));
            }
        }
        for (name, value) in raw.env {
            match env.iter_mut().find(|(known, _)| *known == name) {
                Some(slot) => slot.1 = value,
                None => env.push((name, value)),
            }
        }
        let split = match (raw.split.range, raw.split.files) {
            (Some(range), None) => LocalSplit::Range(pb::RangeSplit {
                start: range.start,
                end: range.end,
                per_unit: range.per_unit,
            }),
            (None, Some(patterns)) => LocalSplit::Files(expand_globs(base, &patterns)?),
            (Some(_), Some(_)) => {
                return Err(Error::field(
                    "split",
                    "give either `range` or `files`, not both",
                ));
            }
            (None, None) => {
                return Err(Error::field(
                    "split",
                    "missing: give `range = { start, end, per_unit }` or `files = [\"glob\"]`",
                ));
            }
        };
        let replication = raw.replication.map_or(DEFAULT_REPLICATION, |r| {
            let min_quorum = r.min_quorum.unwrap_or(DEFAULT_REPLICATION.min_quorum);
            let target_results = r.target_results.unwrap_or(min_quorum);
            pb::Replication {
                min_quorum,
                target_results,
                max_total_results: r
                    .max_total_results
                    .unwrap_or(target_results + DEFAULT_REPLICATION.max_total_results - 2),
                adaptive: r.adaptive,
            }
        });
        let limits = raw.limits.map_or_else(default_limits, |l| pb::Limits {
            fuel: l.fuel.unwrap_or(DEFAULT_FUEL),
            memory_mib: l.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            deadline_s: l.deadline_s.unwrap_or(DEFAULT_DEADLINE_S),
            max_output_bytes: l.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
        });
        let validator_module = raw
            .validator
            .as_ref()
            .and_then(|v| v.module.as_deref())
            .map(|path| wasm_module(base, path, "validator.module"))
            .transpose()?;
        let validator = raw.validator.map_or_else(bitwise, |v| pb::Validator {
            kind: v.kind,
            rel_tolerance: v.rel_tolerance.unwrap_or(0.0),
            abs_tolerance: v.abs_tolerance.unwrap_or(0.0),
            // The blob is known once uploaded; `check` needs to know one is named.
            module: v.module.map(|_| pb::BlobRef::default()),
        });
        let (known_answers, known_answer_copies) = match raw.spot_check {
            Some(spot_check) => (
                spot_check
                    .units
                    .into_iter()
                    .map(|known| {
                        let digest = hex::decode(&known.digest)
                            .ok()
                            .filter(|d| d.len() == 32)
                            .ok_or_else(|| {
                                Error::field(
                                    "spot_check.units.digest",
                                    format!(
                                        "{:?} is not a digest: 64 hex digits, as `cobble-worker exec` prints",
                                        known.digest
                                    ),
                                )
                            })?;
                        Ok(pb::KnownAnswer {
                            args: known.args,
                            digest,
                            fuel: known.fuel.unwrap_or(0),
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?,
                spot_check.copies.unwrap_or(DEFAULT_KNOWN_ANSWER_COPIES),
            ),
            None => (Vec::new(), 0),
        };
        let reduce = raw
            .reduce
            .map(|r| parse_reduce(r, base, runtime, script_arg, &inputs))
            .transpose()?;
        let job = LocalJob {
            name: raw.name,
            module,
            runtime,
            args,
            env,
            inputs,
            split,
            replication,
            limits,
            validator,
            validator_module,
            known_answers,
            known_answer_copies,
            nan_canonicalization: raw
                .engine
                .and_then(|e| e.nan_canonicalization)
                .unwrap_or(true),
            module_signature,
            reduce,
        };
        job.check()?;
        Ok(job)
    }

    fn check(&self) -> Result<(), Error> {
        check_name(&self.name)?;
        let split = match &self.split {
            LocalSplit::Range(range) => Rule::Range(*range),
            LocalSplit::Files(files) => Rule::Files(pb::FilesSplit {
                files: files
                    .iter()
                    .map(|(name, _)| pb::NamedBlob {
                        name: name.clone(),
                        blob: None,
                    })
                    .collect(),
            }),
        };
        let input_names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        check_common(
            &self.args,
            &input_names,
            &split,
            &self.replication,
            &self.limits,
        )?;
        check_validator(&self.validator, false)?;
        check_env(
            self.env
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )?;
        if let Some(reduce) = &self.reduce {
            let own: Vec<&str> = reduce.inputs.iter().map(|(n, _)| n.as_str()).collect();
            check_reduce(&reduce.args, &own, &input_names)?;
            check_env(
                reduce
                    .env(&self.env)
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )?;
        }
        check_known_answers(&self.known_answers, self.known_answer_copies, &self.limits)
    }

    /// Builds the protocol spec once the blobs are known by hash.
    /// `blob_of` maps a local path to the reference of its uploaded bytes.
    pub fn to_spec<E>(
        &self,
        mut blob_of: impl FnMut(&Path) -> Result<pb::BlobRef, E>,
    ) -> Result<pb::JobSpec, E> {
        let named = |list: &[(String, PathBuf)],
                     blob_of: &mut dyn FnMut(&Path) -> Result<pb::BlobRef, E>|
         -> Result<Vec<pb::NamedBlob>, E> {
            list.iter()
                .map(|(name, path)| {
                    Ok(pb::NamedBlob {
                        name: name.clone(),
                        blob: Some(blob_of(path)?),
                    })
                })
                .collect()
        };
        let inputs = named(&self.inputs, &mut blob_of)?;
        let rule = match &self.split {
            LocalSplit::Range(range) => Rule::Range(*range),
            LocalSplit::Files(files) => Rule::Files(pb::FilesSplit {
                files: named(files, &mut blob_of)?,
            }),
        };
        Ok(pb::JobSpec {
            name: self.name.clone(),
            module: match &self.module {
                Some(path) => Some(blob_of(path)?),
                None => None,
            },
            runtime: self
                .runtime
                .map_or_else(String::new, |r| r.name.to_string()),
            env: self
                .env
                .iter()
                .map(|(name, value)| pb::EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            args: self.args.clone(),
            inputs,
            split: Some(pb::SplitRule { rule: Some(rule) }),
            replication: Some(self.replication),
            limits: Some(self.limits),
            validator: Some(pb::Validator {
                module: match &self.validator_module {
                    Some(path) => Some(blob_of(path)?),
                    None => None,
                },
                ..self.validator.clone()
            }),
            nan_canonicalization_off: !self.nan_canonicalization,
            known_answers: self.known_answers.clone(),
            known_answer_copies: self.known_answer_copies,
            module_signature: self.module_signature.clone().unwrap_or_default(),
            reduce: match &self.reduce {
                Some(reduce) => Some(pb::ReduceStep {
                    args: reduce.args.clone(),
                    module: match &reduce.module {
                        Some(path) => Some(blob_of(path)?),
                        None => None,
                    },
                    module_signature: reduce.module_signature.clone().unwrap_or_default(),
                    runtime: reduce
                        .runtime
                        .map_or_else(String::new, |r| r.name.to_string()),
                    inputs: named(&reduce.inputs, &mut blob_of)?,
                }),
                None => None,
            },
        })
    }
}

/// `[reduce]`: a module of its own, a script on a runtime (the job's or
/// its own), or, with neither, the job's program with other arguments (on a
/// runtime, the job's script again, first).
fn parse_reduce(
    raw: ReduceToml,
    base: &Path,
    job_runtime: Option<&'static Runtime>,
    job_script: Option<String>,
    job_inputs: &[(String, PathBuf)],
) -> Result<LocalReduce, Error> {
    let mut args = raw.args;
    let mut inputs = Vec::new();
    let (module, module_signature, runtime) = match (raw.module, raw.script) {
        (Some(_), Some(_)) => {
            return Err(Error::field(
                "reduce.module",
                "give either `module` or `script`, not both",
            ));
        }
        (Some(module), None) => {
            if raw.runtime.is_some() {
                return Err(Error::field(
                    "reduce.runtime",
                    "a reduce module runs on no runtime; `runtime` goes with `script`",
                ));
            }
            let module = wasm_module(base, &module, "reduce.module")?;
            let signature = read_signature(base, &module, raw.module_signature.as_deref())?;
            (Some(module), signature, None)
        }
        (None, Some(script)) => {
            if raw.module_signature.is_some() {
                return Err(Error::field(
                    "reduce.module_signature",
                    "a reduce script has no module of its own to sign",
                ));
            }
            let runtime = match &raw.runtime {
                Some(name) => runtime_named(name, "reduce.runtime", "version")?,
                None => job_runtime.ok_or_else(|| {
                    Error::field(
                        "reduce.script",
                        "a script runs on a runtime: add runtime = \"python\" to [reduce]",
                    )
                })?,
            };
            let (name, path) = local_file(base, &script, "reduce.script")?;
            args.insert(0, format!("/input/{name}"));
            match job_inputs.iter().find(|(known, _)| *known == name) {
                // The job's own script, run again.
                Some((_, known)) if *known == path => {}
                Some(_) => {
                    return Err(Error::field(
                        "reduce.script",
                        format!("{name:?}: the job has another input of that name"),
                    ));
                }
                None => inputs.push((name, path)),
            }
            // On the job's runtime it runs the job's module.
            let own = (Some(runtime) != job_runtime).then_some(runtime);
            (None, None, own)
        }
        (None, None) => {
            if raw.runtime.is_some() || raw.module_signature.is_some() {
                return Err(Error::field(
                    "reduce.runtime",
                    "`runtime` goes with `script`, `module_signature` with `module`",
                ));
            }
            if let Some(script) = job_script {
                args.insert(0, script);
            }
            (None, None, None)
        }
    };
    Ok(LocalReduce {
        module,
        module_signature,
        runtime,
        args,
        inputs,
    })
}

/// A file a spec names (an input, a script, a package): readable, inside
/// the spec's folder; returns its name under /input and its path.
fn local_file(base: &Path, named: &Path, field: &str) -> Result<(String, PathBuf), Error> {
    let path = base.join(named);
    if !path.is_file() {
        return Err(Error::field(
            field,
            format!("{} is not a readable file", path.display()),
        ));
    }
    check_inside(base, &path, field)?;
    Ok((file_name(&path, field)?, path))
}

/// The module's detached signature: the file the spec names (which must
/// exist), else `<module>.sig` if there is one, else none.
fn read_signature(
    base: &Path,
    module: &Path,
    named: Option<&Path>,
) -> Result<Option<Vec<u8>>, Error> {
    let path = match named {
        Some(named) => base.join(named),
        None => {
            let mut beside = module.as_os_str().to_os_string();
            beside.push(".sig");
            let beside = PathBuf::from(beside);
            if !beside.is_file() {
                return Ok(None);
            }
            beside
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::field(
            "module_signature",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    crate::code_signing::from_file_text(&text)
        .map(Some)
        .map_err(|e| Error::field("module_signature", e.to_string()))
}

fn bitwise() -> pb::Validator {
    pb::Validator {
        kind: "bitwise".into(),
        rel_tolerance: 0.0,
        abs_tolerance: 0.0,
        module: None,
    }
}

/// `blob_known`: the module must name a well-formed blob (a spec on the
/// wire), not merely be present (a spec read from disk, not yet uploaded).
fn check_validator(v: &pb::Validator, blob_known: bool) -> Result<(), Error> {
    if v.kind != "module" && v.module.is_some() {
        return Err(Error::field(
            "validator.module",
            "only a validator of kind = \"module\" runs a module",
        ));
    }
    match v.kind.as_str() {
        "" | "bitwise" => Ok(()),
        "module" => match &v.module {
            None => Err(Error::field(
                "validator.module",
                "a module validator needs module = \"<file>.wasm\"",
            )),
            Some(blob) if blob_known => crate::BlobHash::from_slice(&blob.hash)
                .map(|_| ())
                .map_err(|e| Error::field("validator.module", e.to_string())),
            Some(_) => Ok(()),
        },
        "numeric" => {
            if !v.rel_tolerance.is_finite() || !(0.0..=1.0).contains(&v.rel_tolerance) {
                return Err(Error::field(
                    "validator.rel_tolerance",
                    "must be between 0 and 1",
                ));
            }
            if !v.abs_tolerance.is_finite() || v.abs_tolerance < 0.0 {
                return Err(Error::field(
                    "validator.abs_tolerance",
                    "must be a non-negative number",
                ));
            }
            if v.rel_tolerance == 0.0 && v.abs_tolerance == 0.0 {
                return Err(Error::field(
                    "validator",
                    "a numeric validator needs rel_tolerance or abs_tolerance; without one use kind = \"bitwise\"",
                ));
            }
            Ok(())
        }
        other => Err(Error::field(
            "validator.kind",
            format!("unknown validator {other:?}; use \"bitwise\", \"numeric\" or \"module\""),
        )),
    }
}

/// Known answers must be checkable: a digest of 32 bytes, arguments a
/// unit could take, a fuel figure the job's limit allows, and copies for
/// at least one host each when there are any.
fn check_known_answers(
    known: &[pb::KnownAnswer],
    copies: u32,
    limits: &pb::Limits,
) -> Result<(), Error> {
    if known.len() > MAX_KNOWN_ANSWERS {
        return Err(Error::field(
            "spot_check.units",
            format!("at most {MAX_KNOWN_ANSWERS} known-answer units"),
        ));
    }
    if !known.is_empty() && !(1..=MAX_KNOWN_ANSWER_COPIES).contains(&copies) {
        return Err(Error::field(
            "spot_check.copies",
            format!("must be from 1 to {MAX_KNOWN_ANSWER_COPIES}"),
        ));
    }
    for unit in known {
        if unit.digest.len() != 32 {
            return Err(Error::field(
                "spot_check.units.digest",
                "must be 32 bytes (64 hex digits)",
            ));
        }
        if unit.fuel > limits.fuel {
            return Err(Error::field(
                "spot_check.units.fuel",
                format!(
                    "{} is above the job's fuel limit of {}",
                    unit.fuel, limits.fuel
                ),
            ));
        }
        if unit.args.len() > 1_000 || unit.args.iter().any(|a| a.len() > 4_096) {
            return Err(Error::field(
                "spot_check.units.args",
                "at most 1000 arguments of at most 4096 bytes each",
            ));
        }
        if let Some(arg) = unit
            .args
            .iter()
            .find(|a| PLACEHOLDERS.iter().any(|p| a.contains(p)))
        {
            return Err(Error::field(
                "spot_check.units.args",
                format!(
                    "{arg:?}: a known-answer unit's arguments are literal, without placeholders"
                ),
            ));
        }
    }
    Ok(())
}

fn default_limits() -> pb::Limits {
    pb::Limits {
        fuel: DEFAULT_FUEL,
        memory_mib: DEFAULT_MEMORY_MIB,
        deadline_s: DEFAULT_DEADLINE_S,
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
    }
}

fn file_name(path: &Path, field: &str) -> Result<String, Error> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::field(field, format!("{} has no UTF-8 file name", path.display())))
}

fn expand_globs(base: &Path, patterns: &[String]) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut files = Vec::new();
    for pattern in patterns {
        let full = base.join(pattern);
        let full = full.to_string_lossy();
        let paths = glob::glob(&full)
            .map_err(|e| Error::field("split.files", format!("bad pattern {pattern:?}: {e}")))?;
        let before = files.len();
        for path in paths.flatten() {
            if path.is_file() {
                check_inside(base, &path, "split.files")?;
                files.push((file_name(&path, "split.files")?, path));
            }
        }
        if files.len() == before {
            return Err(Error::field(
                "split.files",
                format!("pattern {pattern:?} matches no file"),
            ));
        }
    }
    Ok(files)
}

/// Data files go to every volunteer, so a spec may name only files in its
/// own folder or below (links resolved): a spec someone hands you cannot
/// make you publish `/etc` or your home directory.
fn check_inside(base: &Path, path: &Path, field: &str) -> Result<(), Error> {
    let resolve = |p: &Path| {
        p.canonicalize()
            .map_err(|e| Error::field(field, format!("{}: {e}", p.display())))
    };
    let (folder, file) = (
        resolve(if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        })?,
        resolve(path)?,
    );
    if file.starts_with(&folder) {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!(
                "{} is outside the spec's folder {}: data files must be beside the spec or below it",
                path.display(),
                folder.display()
            ),
        ))
    }
}

/// A module a spec names (the job's, its validator's, its reduce step's):
/// a readable WebAssembly file, its path resolved against the spec's folder.
fn wasm_module(base: &Path, named: &Path, field: &str) -> Result<PathBuf, Error> {
    let path = base.join(named);
    if !path.is_file() {
        return Err(Error::field(
            field,
            format!("{} is not a readable file", path.display()),
        ));
    }
    check_wasm_file(&path, field)?;
    Ok(path)
}

/// The runtime a spec names; `knower` says who does not know another
/// ("version" in the CLI, "coordinator" on the wire).
fn runtime_named(name: &str, field: &str, knower: &str) -> Result<&'static Runtime, Error> {
    crate::runtime::named(name).ok_or_else(|| {
        Error::field(
            field,
            format!(
                "{name:?} is not a runtime this {knower} knows: {}",
                crate::runtime::names()
            ),
        )
    })
}

/// A module signature on the wire: absent, or the 64 bytes of ed25519.
fn check_signature_shape(field: &str, signature: &[u8]) -> Result<(), Error> {
    if matches!(signature.len(), 0 | 64) {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!("an ed25519 signature is 64 bytes, not {}", signature.len()),
        ))
    }
}

/// Files on the wire: each names a blob by a well-formed hash.
fn check_named_blobs(field: &str, list: &[pb::NamedBlob]) -> Result<(), Error> {
    for named in list {
        let blob = named
            .blob
            .as_ref()
            .ok_or_else(|| Error::field(field, format!("{:?} has no blob", named.name)))?;
        crate::BlobHash::from_slice(&blob.hash).map_err(|e| Error::field(field, e.to_string()))?;
    }
    Ok(())
}

/// Modules may live anywhere (a build directory), but must be WebAssembly:
/// a mistyped path must not upload some other file for volunteers to see.
fn check_wasm_file(path: &Path, field: &str) -> Result<(), Error> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let is_wasm = std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\0asm";
    if is_wasm {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!("{} is not a WebAssembly module", path.display()),
        ))
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(Error::field("name", "must be 1 to 100 characters"));
    }
    Ok(())
}

/// A name a unit sees under `/input`: one plain path component.
fn check_input_name(field: &str, name: &str) -> Result<(), Error> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!("{name:?} is not a plain file name"),
        ))
    }
}

/// Checks shared by the CLI and the coordinator: everything but file access.
fn check_common(
    args: &[String],
    input_names: &[&str],
    split: &Rule,
    replication: &pb::Replication,
    limits: &pb::Limits,
) -> Result<(), Error> {
    let is_range = matches!(split, Rule::Range(_));
    for arg in args {
        for placeholder in placeholders_in(arg) {
            if !PLACEHOLDERS.contains(&placeholder) {
                return Err(Error::field(
                    "args",
                    format!(
                        "unknown placeholder {placeholder} in {arg:?}; use {}",
                        PLACEHOLDERS.join(" ")
                    ),
                ));
            }
            if is_range && placeholder == "{file}" {
                return Err(Error::field(
                    "args",
                    "{file} needs `split.files`, but this job splits a range",
                ));
            }
            if !is_range && (placeholder == "{start}" || placeholder == "{end}") {
                return Err(Error::field(
                    "args",
                    format!("{placeholder} needs `split.range`, but this job splits files"),
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for name in input_names {
        check_input_name("inputs", name)?;
        if !seen.insert(*name) {
            return Err(Error::field(
                "inputs",
                format!("two inputs are named {name:?}"),
            ));
        }
    }
    match split {
        Rule::Range(range) => {
            if range.per_unit <= 0 {
                return Err(Error::field("split.range.per_unit", "must be positive"));
            }
            if range.end <= range.start {
                return Err(Error::field(
                    "split.range.end",
                    format!("must be greater than start ({})", range.start),
                ));
            }
            let units = unit_count(range);
            if units > MAX_UNITS {
                return Err(Error::field(
                    "split.range.per_unit",
                    format!("makes {units} units; at most {MAX_UNITS} are allowed"),
                ));
            }
        }
        Rule::Files(files) => {
            if files.files.is_empty() {
                return Err(Error::field("split.files", "names no file"));
            }
            let mut names = HashSet::new();
            for file in &files.files {
                check_input_name("split.files", &file.name)?;
                if seen.contains(file.name.as_str()) {
                    return Err(Error::field(
                        "split.files",
                        format!("{:?} is also the name of an input", file.name),
                    ));
                }
                if !names.insert(file.name.as_str()) {
                    return Err(Error::field(
                        "split.files",
                        format!("two files are named {:?}", file.name),
                    ));
                }
            }
        }
    }
    check_replication(replication)?;
    check_limits(limits)
}

fn check_replication(r: &pb::Replication) -> Result<(), Error> {
    if r.min_quorum == 0 {
        return Err(Error::field("replication.min_quorum", "must be at least 1"));
    }
    if r.target_results < r.min_quorum {
        return Err(Error::field(
            "replication.target_results",
            format!("must be at least min_quorum ({})", r.min_quorum),
        ));
    }
    if r.max_total_results < r.target_results {
        return Err(Error::field(
            "replication.max_total_results",
            format!("must be at least target_results ({})", r.target_results),
        ));
    }
    if r.max_total_results > MAX_REPLICAS {
        return Err(Error::field(
            "replication.max_total_results",
            format!("must be at most {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

fn check_limits(l: &pb::Limits) -> Result<(), Error> {
    if l.fuel == 0 {
        return Err(Error::field("limits.fuel", "must be positive"));
    }
    if l.memory_mib == 0 || l.memory_mib > MAX_MEMORY_MIB {
        return Err(Error::field(
            "limits.memory_mib",
            format!("must be between 1 and {MAX_MEMORY_MIB}"),
        ));
    }
    if l.deadline_s == 0 || l.deadline_s > MAX_DEADLINE_S {
        return Err(Error::field(
            "limits.deadline_s",
            format!("must be between 1 and {MAX_DEADLINE_S} (30 days)"),
        ));
    }
    if l.max_output_bytes == 0 || l.max_output_bytes > MAX_OUTPUT_BYTES {
        return Err(Error::field(
            "limits.max_output_bytes",
            format!(
                "must be between 1 and {MAX_OUTPUT_BYTES} (1 GiB): workers hold stdout in memory"
            ),
        ));
    }
    Ok(())
}

/// Every `{...}` group in an argument template.
fn placeholders_in(arg: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                found.push(&rest[open..open + close + 1]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    found
}

fn unit_count(range: &pb::RangeSplit) -> u64 {
    let span = (range.end as i128 - range.start as i128).max(0) as u128;
    let per_unit = range.per_unit.max(1) as u128;
    span.div_ceil(per_unit).min(u64::MAX as u128) as u64
}

/// Checks a spec that arrived over the network; the coordinator trusts
/// nothing the CLI checked. Returns the validated parts.
pub fn check_spec(spec: &pb::JobSpec) -> Result<(), Error> {
    check_name(&spec.name)?;
    if !spec.runtime.is_empty() {
        runtime_named(&spec.runtime, "runtime", "coordinator")?;
    }
    check_env(
        spec.env
            .iter()
            .map(|var| (var.name.as_str(), var.value.as_str())),
    )?;
    // A runtime's module is filled in by the coordinator before this.
    let module = spec
        .module
        .as_ref()
        .ok_or_else(|| Error::field("module", "missing"))?;
    crate::BlobHash::from_slice(&module.hash).map_err(|e| Error::field("module", e.to_string()))?;
    check_signature_shape("module_signature", &spec.module_signature)?;
    let rule = spec
        .split
        .as_ref()
        .and_then(|s| s.rule.as_ref())
        .ok_or_else(|| Error::field("split", "missing"))?;
    check_named_blobs("inputs", &spec.inputs)?;
    if let Rule::Files(files) = rule {
        check_named_blobs("inputs", &files.files)?;
    }
    let input_names: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
    let replication = spec
        .replication
        .ok_or_else(|| Error::field("replication", "missing"))?;
    let limits = spec
        .limits
        .ok_or_else(|| Error::field("limits", "missing"))?;
    check_common(&spec.args, &input_names, rule, &replication, &limits)?;
    spec.validator
        .as_ref()
        .map_or(Ok(()), |v| check_validator(v, true))?;
    if let Some(reduce) = &spec.reduce {
        check_reduce_step(spec, reduce, &input_names)?;
    }
    check_known_answers(&spec.known_answers, spec.known_answer_copies, &limits)
}

/// Every blob a spec names, with what names it: modules (the job's, its
/// validator's, its reduce step's), shared inputs, split files and the
/// reduce step's own files. What a coordinator must hold before accepting
/// the job and keep while it lives.
pub fn blobs_mut(spec: &mut pb::JobSpec) -> Vec<(String, &mut pb::BlobRef)> {
    let mut blobs: Vec<(String, &mut pb::BlobRef)> = Vec::new();
    if let Some(module) = spec.module.as_mut() {
        blobs.push(("module".into(), module));
    }
    if let Some(module) = spec.validator.as_mut().and_then(|v| v.module.as_mut()) {
        blobs.push(("validator.module".into(), module));
    }
    fn named<'a>(list: &'a mut [pb::NamedBlob], blobs: &mut Vec<(String, &'a mut pb::BlobRef)>) {
        for input in list {
            if let Some(blob) = input.blob.as_mut() {
                blobs.push((input.name.clone(), blob));
            }
        }
    }
    named(&mut spec.inputs, &mut blobs);
    if let Some(Rule::Files(files)) = spec.split.as_mut().and_then(|s| s.rule.as_mut()) {
        named(&mut files.files, &mut blobs);
    }
    if let Some(reduce) = spec.reduce.as_mut() {
        if let Some(module) = reduce.module.as_mut() {
            blobs.push(("reduce.module".into(), module));
        }
        named(&mut reduce.inputs, &mut blobs);
    }
    blobs
}

/// A job's environment: at most this many variables, names of at most
/// [`MAX_ENV_NAME`] bytes, values of at most [`MAX_ENV_VALUE`].
pub const MAX_ENV_VARS: usize = 64;
const MAX_ENV_NAME: usize = 128;
const MAX_ENV_VALUE: usize = 4096;

/// Environment variables: POSIX names (letters, digits, `_`, not starting
/// with a digit), each once, values without NUL, all bounded. Checked on
/// the spec and again on every manifest a worker receives.
pub fn check_env<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for (count, (name, value)) in vars.enumerate() {
        if count >= MAX_ENV_VARS {
            return Err(Error::field(
                "env",
                format!("more than {MAX_ENV_VARS} variables"),
            ));
        }
        let valid = !name.is_empty()
            && name.len() <= MAX_ENV_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::field(
                "env",
                format!(
                    "{name:?} is not a variable name: letters, digits and _, not starting with a digit, at most {MAX_ENV_NAME} bytes"
                ),
            ));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(Error::field(
                "env",
                format!("{name}: the value is longer than {MAX_ENV_VALUE} bytes or holds a NUL"),
            ));
        }
        if !seen.insert(name) {
            return Err(Error::field("env", format!("{name} is set twice")));
        }
    }
    Ok(())
}

/// Arguments of the reduce unit fewer than which any real assembly step
/// needs; each at most [`MAX_REDUCE_ARG`] bytes.
const MAX_REDUCE_ARGS: usize = 256;
const MAX_REDUCE_ARG: usize = 4096;

/// A reduce step as the coordinator receives it (its runtime's module
/// already filled in): blobs named by hash, signature of the right length,
/// the variables it would see within bounds.
fn check_reduce_step(
    spec: &pb::JobSpec,
    reduce: &pb::ReduceStep,
    job_inputs: &[&str],
) -> Result<(), Error> {
    if let Some(module) = &reduce.module {
        crate::BlobHash::from_slice(&module.hash)
            .map_err(|e| Error::field("reduce.module", e.to_string()))?;
    }
    check_signature_shape("reduce.module_signature", &reduce.module_signature)?;
    let own: Vec<&str> = reduce.inputs.iter().map(|i| i.name.as_str()).collect();
    check_reduce(&reduce.args, &own, job_inputs)?;
    check_named_blobs("reduce.inputs", &reduce.inputs)?;
    if reduce.runtime.is_empty() {
        return Ok(());
    }
    let runtime = runtime_named(&reduce.runtime, "reduce.runtime", "coordinator")?;
    if reduce.module.is_none() {
        return Err(Error::field(
            "reduce.module",
            "missing: a runtime's module is the coordinator's to fill in",
        ));
    }
    let job_env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect();
    check_env(
        runtime
            .with_env(&job_env)
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    )
}

/// The reduce unit's arguments: literal (there is one reduce unit, so no
/// per-unit placeholder means anything), bounded in number and length. Its
/// own files' names are plain and not the job's; and no name of either is a
/// number, which would hide a unit's outputs under `/input/INDEX/`.
fn check_reduce(args: &[String], own_inputs: &[&str], job_inputs: &[&str]) -> Result<(), Error> {
    for name in own_inputs {
        check_input_name("reduce.inputs", name)?;
        if job_inputs.contains(name) {
            return Err(Error::field(
                "reduce.inputs",
                format!("{name:?}: the job has an input of that name"),
            ));
        }
    }
    if let Some(name) = job_inputs
        .iter()
        .chain(own_inputs)
        .find(|name| name.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::field(
            "inputs",
            format!(
                "{name:?}: the reduce unit reads unit {name}'s outputs at /input/{name}/; rename the file"
            ),
        ));
    }
    if args.len() > MAX_REDUCE_ARGS {
        return Err(Error::field(
            "reduce.args",
            format!("{} arguments; at most {MAX_REDUCE_ARGS}", args.len()),
        ));
    }
    for arg in args {
        if arg.len() > MAX_REDUCE_ARG || arg.contains('\0') {
            return Err(Error::field(
                "reduce.args",
                format!("an argument is longer than {MAX_REDUCE_ARG} bytes or holds a NUL"),
            ));
        }
        if let Some(placeholder) = placeholders_in(arg).first() {
            return Err(Error::field(
                "reduce.args",
                format!(
                    "{placeholder} in {arg:?}: the reduce unit is one unit; its inputs are every unit's outputs under /input/INDEX/"
                ),
            ));
        }
    }
    Ok(())
}

/// One work unit as the split rule defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitPlan {
    pub index: u32,
    pub args: Vec<String>,
    pub inputs: Vec<pb::NamedBlob>,
}

/// Cuts a checked spec into its work units, filling argument placeholders.
pub fn split(spec: &pb::JobSpec) -> Vec<UnitPlan> {
    let fill = |index: u32, start: &str, end: &str, file: &str| -> Vec<String> {
        spec.args
            .iter()
            .map(|arg| {
                arg.replace("{start}", start)
                    .replace("{end}", end)
                    .replace("{index}", &index.to_string())
                    .replace("{file}", file)
            })
            .collect()
    };
    match spec.split.as_ref().and_then(|s| s.rule.as_ref()) {
        Some(Rule::Range(range)) => (0..unit_count(range))
            .map(|i| {
                // In i128: near the ends of i64 these sums must not wrap.
                let start = i128::from(range.start) + i128::from(i) * i128::from(range.per_unit);
                let end = (start + i128::from(range.per_unit)).min(i128::from(range.end));
                let index = i as u32;
                UnitPlan {
                    index,
                    args: fill(index, &start.to_string(), &end.to_string(), ""),
                    inputs: spec.inputs.clone(),
                }
            })
            .collect(),
        Some(Rule::Files(files)) => files
            .files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let index = i as u32;
                let mut inputs = spec.inputs.clone();
                inputs.push(file.clone());
                UnitPlan {
                    index,
                    args: fill(index, "", "", &file.name),
                    inputs,
                }
            })
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
