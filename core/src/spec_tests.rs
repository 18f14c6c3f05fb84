//! Spec parsing tests: one `check` helper, one line per invalid field.

use super::*;
use std::fs;

/// A temp dir holding a module, an input and two data files.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("unit.wasm"), b"\0asm").expect("write");
    fs::write(dir.path().join("table.bin"), b"t").expect("write");
    fs::create_dir(dir.path().join("data")).expect("mkdir");
    fs::write(dir.path().join("data/a.txt"), b"a").expect("write");
    fs::write(dir.path().join("data/b.txt"), b"b").expect("write");
    dir
}

const VALID: &str = r#"
name = "primes"
module = "unit.wasm"
args = ["{start}", "{end}"]
inputs = ["table.bin"]
[split]
range = { start = 0, end = 1000, per_unit = 300 }
[replication]
min_quorum = 2
target_results = 3
max_total_results = 5
[limits]
fuel = 1000
memory_mib = 64
deadline_s = 60
"#;

/// The protocol spec of `job`, every blob standing in as `[byte; 32]`.
fn spec_of(job: &LocalJob, byte: u8) -> pb::JobSpec {
    job.to_spec(|_| {
        Ok::<_, ()>(pb::BlobRef {
            hash: vec![byte; 32],
            size: 1,
            chunk_root: Vec::new(),
        })
    })
    .expect("spec")
}

/// Parses `VALID` with `from` replaced by `to` and expects an error that
/// mentions every fragment in `expected`.
fn check(from: &str, to: &str, expected: &[&str]) {
    let dir = fixture();
    assert!(VALID.contains(from), "fixture lacks {from:?}");
    let text = VALID.replace(from, to);
    let error = match LocalJob::parse(&text, dir.path()) {
        Ok(job) => panic!("{to:?} was accepted: {job:?}"),
        Err(error) => error.to_string(),
    };
    for fragment in expected {
        assert!(
            error.contains(fragment),
            "error for {to:?} is {error:?}, expected it to mention {fragment:?}"
        );
    }
}

#[test]
fn valid_spec_parses_and_splits() {
    let dir = fixture();
    let job = LocalJob::parse(VALID, dir.path()).expect("valid spec");
    assert_eq!(job.inputs[0].0, "table.bin");
    let spec = job
        .to_spec(|path| {
            Ok::<_, ()>(pb::BlobRef {
                hash: crate::BlobHash::of(path.to_string_lossy().as_bytes())
                    .0
                    .to_vec(),
                size: 1,
                chunk_root: Vec::new(),
            })
        })
        .expect("spec");
    check_spec(&spec).expect("the coordinator accepts what the CLI accepts");
    let units = split(&spec);
    let args: Vec<Vec<String>> = units.iter().map(|u| u.args.clone()).collect();
    assert_eq!(
        args,
        [
            ["0", "300"],
            ["300", "600"],
            ["600", "900"],
            ["900", "1000"]
        ]
        .map(|pair| pair.map(String::from).to_vec())
    );
    assert!(units.iter().all(|u| u.inputs.len() == 1));
}

#[test]
fn nan_canonicalization_is_on_unless_turned_off() {
    let dir = fixture();
    let job = LocalJob::parse(VALID, dir.path()).expect("valid spec");
    assert!(job.nan_canonicalization);
    let text = format!("{VALID}[engine]\nnan_canonicalization = false\n");
    let job = LocalJob::parse(&text, dir.path()).expect("valid spec");
    assert!(!job.nan_canonicalization);
    let text = format!("{VALID}[engine]\nnan = false\n");
    assert!(LocalJob::parse(&text, dir.path()).is_err());
}

#[test]
fn files_split_gives_one_unit_per_file() {
    let dir = fixture();
    let text = VALID
        .replace(
            r#"args = ["{start}", "{end}"]"#,
            r#"args = ["/input/{file}", "{index}"]"#,
        )
        .replace(
            "range = { start = 0, end = 1000, per_unit = 300 }",
            r#"files = ["data/*.txt"]"#,
        );
    let job = LocalJob::parse(&text, dir.path()).expect("valid spec");
    let spec = spec_of(&job, 0);
    let units = split(&spec);
    assert_eq!(units.len(), 2);
    assert_eq!(units[1].args, ["/input/b.txt", "1"]);
    assert_eq!(
        units[1].inputs.len(),
        2,
        "shared input plus the unit's file"
    );
}

#[test]
fn invalid_fields_are_named() {
    check(r#"name = "primes""#, r#"name = """#, &["name", "1 to 100"]);
    check(
        r#""unit.wasm""#,
        r#""missing.wasm""#,
        &["module", "missing.wasm"],
    );
    check(
        r#"["table.bin"]"#,
        r#"["nope.bin"]"#,
        &["inputs", "nope.bin"],
    );
    check(
        r#"["table.bin"]"#,
        r#"["table.bin", "table.bin"]"#,
        &["inputs", "two inputs"],
    );
    check(r#""{end}""#, r#""{stop}""#, &["args", "{stop}"]);
    check(r#""{end}""#, r#""{file}""#, &["args", "split.files"]);
    check(
        "per_unit = 300",
        "per_unit = 0",
        &["split.range.per_unit", "positive"],
    );
    check(
        "end = 1000",
        "end = 0",
        &["split.range.end", "greater than start"],
    );
    check(
        "range = { start = 0, end = 1000, per_unit = 300 }",
        "range = { start = 0, end = 1000, per_unit = 300 }\nfiles = [\"data/*.txt\"]",
        &["split", "not both"],
    );
    check(
        "range = { start = 0, end = 1000, per_unit = 300 }",
        r#"files = ["data/*.csv"]"#,
        &["split.files", "matches no file"],
    );
    check(
        "end = 1000, per_unit = 300",
        "end = 9000000000, per_unit = 1",
        &["split.range.per_unit", "at most"],
    );
    check(
        "min_quorum = 2",
        "min_quorum = 0",
        &["replication.min_quorum"],
    );
    check(
        "target_results = 3",
        "target_results = 1",
        &["replication.target_results", "min_quorum"],
    );
    check(
        "max_total_results = 5",
        "max_total_results = 2",
        &["replication.max_total_results", "target_results"],
    );
    check("fuel = 1000", "fuel = 0", &["limits.fuel", "positive"]);
    check(
        "deadline_s = 60",
        "deadline_s = 60\nmax_output_bytes = 18446744073709551615",
        &["limits.max_output_bytes", "1 GiB"],
    );
    check(
        "memory_mib = 64",
        "memory_mib = 5000",
        &["limits.memory_mib", "4096"],
    );
    check("deadline_s = 60", "deadline_s = 0", &["limits.deadline_s"]);
    check("fuel = 1000", "fuel = \"lots\"", &["fuel", "expected u64"]);
    check("fuel = 1000", "fuels = 1000", &["unknown field", "fuels"]);
    check(r#"name = "primes""#, "", &["missing field", "name"]);
    let with_validator = |validator: &str| format!("deadline_s = 60\n[validator]\n{validator}");
    check(
        "deadline_s = 60",
        &with_validator("kind = \"fuzzy\""),
        &["validator.kind", "fuzzy"],
    );
    check(
        "deadline_s = 60",
        &with_validator("kind = \"numeric\""),
        &["validator", "rel_tolerance"],
    );
    check(
        "deadline_s = 60",
        &with_validator("kind = \"numeric\"\nrel_tolerance = 2.0"),
        &["validator.rel_tolerance", "between 0 and 1"],
    );
    check(
        "deadline_s = 60",
        &with_validator("kind = \"module\""),
        &["validator.module", "needs module"],
    );
    check(
        "deadline_s = 60",
        &with_validator("kind = \"module\"\nmodule = \"nowhere.wasm\""),
        &["validator.module", "nowhere.wasm"],
    );
    check(
        "deadline_s = 60",
        &with_validator("kind = \"bitwise\"\nmodule = \"unit.wasm\""),
        &["validator.module", "only a validator of kind"],
    );
}

#[test]
fn known_answers_must_be_checkable() {
    let digest = "ab".repeat(32);
    let with = |table: &str| format!("deadline_s = 60\n[spot_check]\n{table}");
    let known = |fields: &str| with(&format!("units = [{{ {fields} }}]"));
    check(
        "deadline_s = 60",
        &known("args = [\"1\"], digest = \"abc\""),
        &["spot_check.units.digest", "64 hex digits"],
    );
    check(
        "deadline_s = 60",
        &known(&format!("args = [\"{{start}}\"], digest = \"{digest}\"")),
        &["spot_check.units.args", "literal"],
    );
    check(
        "deadline_s = 60",
        &known(&format!("args = [], digest = \"{digest}\", fuel = 5000")),
        &["spot_check.units.fuel", "above the job's fuel limit"],
    );
    check(
        "deadline_s = 60",
        &with(&format!(
            "copies = 0\nunits = [{{ args = [], digest = \"{digest}\" }}]"
        )),
        &["spot_check.copies", "from 1"],
    );
    let dir = fixture();
    let text = VALID.replace(
        "deadline_s = 60",
        &known(&format!(
            "args = [\"0\", \"7\"], digest = \"{digest}\", fuel = 900"
        )),
    );
    let job = LocalJob::parse(&text, dir.path()).expect("a checkable known answer");
    assert_eq!(
        (
            job.known_answers.len(),
            job.known_answer_copies,
            job.known_answers[0].fuel
        ),
        (1, DEFAULT_KNOWN_ANSWER_COPIES, 900)
    );
}

#[test]
fn a_validator_module_is_uploaded_with_the_job() {
    let dir = fixture();
    let text = format!("{VALID}[validator]\nkind = \"module\"\nmodule = \"unit.wasm\"\n");
    let job = LocalJob::parse(&text, dir.path()).expect("parses");
    assert_eq!(job.validator_module, Some(dir.path().join("unit.wasm")));
    let spec = job
        .to_spec(|path| {
            Ok::<_, ()>(pb::BlobRef {
                hash: blake3::hash(path.to_string_lossy().as_bytes())
                    .as_bytes()
                    .to_vec(),
                size: 1,
                chunk_root: Vec::new(),
            })
        })
        .expect("spec");
    check_spec(&spec).expect("a module validator naming an uploaded blob is valid");
    let mut unnamed = spec.clone();
    if let Some(validator) = unnamed.validator.as_mut() {
        validator.module = Some(pb::BlobRef::default());
    }
    let error = check_spec(&unnamed).expect_err("no hash").to_string();
    assert!(error.contains("validator.module"), "{error}");
}

/// A spec someone hands you must not publish your files to volunteers:
/// data files only from the spec's folder, modules only if WebAssembly.
#[test]
fn a_spec_names_no_data_outside_its_folder_and_no_module_that_is_not_wasm() {
    let outer = tempfile::tempdir().expect("temp dir");
    fs::write(outer.path().join("secret.txt"), b"s").expect("write");
    let dir = outer.path().join("job");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("unit.wasm"), b"\0asm").expect("write");
    fs::write(dir.join("table.bin"), b"t").expect("write");
    let parse = |text: String| {
        LocalJob::parse(&text, &dir)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (from, to, field) in [
        (r#"["table.bin"]"#, r#"["../secret.txt"]"#, "inputs"),
        (r#"["table.bin"]"#, r#"["/etc/hostname"]"#, "inputs"),
        (
            "range = { start = 0, end = 1000, per_unit = 300 }",
            r#"files = ["../*.txt"]"#,
            "split.files",
        ),
        (r#""unit.wasm""#, r#""table.bin""#, "module"),
    ] {
        let error = parse(VALID.replace(from, to)).expect_err(to);
        assert!(
            error.contains(field)
                && (error.contains("outside the spec's folder")
                    || error.contains("not a WebAssembly module")),
            "{to}: {error}"
        );
    }
    parse(VALID.to_string()).expect("files beside the spec are fine");
}

#[test]
fn range_splits_near_the_ends_of_i64_do_not_wrap() {
    let spec = pb::JobSpec {
        args: vec!["{start}".into(), "{end}".into()],
        split: Some(pb::SplitRule {
            rule: Some(Rule::Range(pb::RangeSplit {
                start: i64::MAX - 20,
                end: i64::MAX,
                per_unit: 12,
            })),
        }),
        ..Default::default()
    };
    let units = split(&spec);
    let args: Vec<Vec<String>> = units.into_iter().map(|u| u.args).collect();
    assert_eq!(
        args,
        [
            vec![(i64::MAX - 20).to_string(), (i64::MAX - 8).to_string()],
            vec![(i64::MAX - 8).to_string(), i64::MAX.to_string()],
        ]
    );
    let whole = pb::RangeSplit {
        start: i64::MIN,
        end: i64::MAX,
        per_unit: i64::MAX,
    };
    let spec = pb::JobSpec {
        split: Some(pb::SplitRule {
            rule: Some(Rule::Range(whole)),
        }),
        ..spec
    };
    let starts: Vec<String> = split(&spec)
        .into_iter()
        .map(|u| u.args[0].clone())
        .collect();
    assert_eq!(
        starts,
        [
            i64::MIN.to_string(),
            "-1".to_string(),
            (i64::MAX - 1).to_string()
        ]
    );
}

#[test]
fn coordinator_refuses_specs_with_bad_hashes() {
    let spec = pb::JobSpec {
        name: "x".into(),
        module: Some(pb::BlobRef {
            hash: vec![1, 2, 3],
            size: 3,
            chunk_root: Vec::new(),
        }),
        ..Default::default()
    };
    let error = check_spec(&spec).expect_err("short hash").to_string();
    assert!(error.contains("module"), "{error}");
}

/// Known answers sent straight over gRPC, past the CLI's parser, get the
/// same checks: a forged digest length, too many copies, a placeholder.
#[test]
fn coordinator_refuses_known_answers_the_cli_would_refuse() {
    let dir = fixture();
    let job = LocalJob::parse(VALID, dir.path()).expect("valid");
    let spec = spec_of(&job, 7);
    let known = |digest: usize, args: &[&str], copies: u32| pb::JobSpec {
        known_answers: vec![pb::KnownAnswer {
            args: args.iter().map(|a| a.to_string()).collect(),
            digest: vec![1; digest],
            fuel: 0,
        }],
        known_answer_copies: copies,
        ..spec.clone()
    };
    check_spec(&known(32, &["1"], 3)).expect("a checkable known answer");
    for (bad, field) in [
        (known(31, &["1"], 3), "spot_check.units.digest"),
        (known(32, &["1"], 0), "spot_check.copies"),
        (
            known(32, &["1"], MAX_KNOWN_ANSWER_COPIES + 1),
            "spot_check.copies",
        ),
        (known(32, &["{index}"], 3), "spot_check.units.args"),
    ] {
        let error = check_spec(&bad).expect_err(field).to_string();
        assert!(error.contains(field), "{error}");
    }
}

#[test]
fn placeholder_scanner_finds_groups() {
    assert_eq!(
        placeholders_in("a{start}-{end}b{"),
        vec!["{start}", "{end}"]
    );
    assert!(placeholders_in("plain").is_empty());
}

#[test]
fn a_module_signature_comes_from_the_spec_or_beside_the_module() {
    let dir = fixture();
    let job = LocalJob::parse(VALID, dir.path()).expect("valid spec");
    assert_eq!(job.module_signature, None);
    let key = crate::manifest::generate_signing_key();
    let signature = crate::code_signing::sign(&crate::BlobHash::of(b"\0asm"), &key);
    fs::write(
        dir.path().join("unit.wasm.sig"),
        crate::code_signing::to_file_text(&signature),
    )
    .expect("write");
    let job = LocalJob::parse(VALID, dir.path()).expect("valid spec");
    assert_eq!(job.module_signature.as_deref(), Some(&signature[..]));
    let named = VALID.replace(
        "module = \"unit.wasm\"",
        "module = \"unit.wasm\"\nmodule_signature = \"other.sig\"",
    );
    let error = LocalJob::parse(&named, dir.path()).expect_err("missing file");
    assert!(error.to_string().contains("module_signature"), "{error}");
    fs::write(dir.path().join("other.sig"), "not hex").expect("write");
    let error = LocalJob::parse(&named, dir.path()).expect_err("not a signature");
    assert!(error.to_string().contains("128 hex digits"), "{error}");
    // The coordinator's own check: a signature is 64 bytes or absent.
    let mut spec = spec_of(&job, 7);
    assert_eq!(spec.module_signature, signature.to_vec());
    check_spec(&spec).expect("a 64-byte signature passes the shape check");
    spec.module_signature = vec![0; 63];
    let error = check_spec(&spec).expect_err("short signature");
    assert!(error.to_string().contains("64 bytes"), "{error}");
}

#[test]
fn a_reduce_step_is_literal_and_bounded() {
    let dir = fixture();
    let text = format!("{VALID}[reduce]\nargs = [\"assemble\", \"/input\"]\n");
    let job = LocalJob::parse(&text, dir.path()).expect("valid");
    let spec = spec_of(&job, 1);
    assert_eq!(
        spec.reduce.as_ref().map(|r| r.args.clone()),
        Some(vec!["assemble".to_string(), "/input".to_string()])
    );
    check_spec(&spec).expect("the coordinator accepts it");
    assert!(
        spec_of(&LocalJob::parse(VALID, dir.path()).expect("valid"), 1)
            .reduce
            .is_none()
    );
    check(
        "deadline_s = 60\n",
        "deadline_s = 60\n[reduce]\nargs = [\"{index}\"]\n",
        &["reduce.args", "{index}", "one unit"],
    );
    check(
        "deadline_s = 60\n",
        "deadline_s = 60\n[reduce]\nmodule = \"x.wasm\"\n",
        &["reduce.module", "x.wasm is not a readable file"],
    );
    // Over the wire, the coordinator checks again.
    let mut hostile = spec.clone();
    hostile.reduce = Some(pb::ReduceStep {
        args: vec!["x".into(); 1000],
        ..Default::default()
    });
    assert!(check_spec(&hostile).is_err_and(|e| e.to_string().contains("at most 256")));
    hostile.reduce = Some(pb::ReduceStep {
        args: vec!["y".repeat(5000)],
        ..Default::default()
    });
    assert!(check_spec(&hostile).is_err_and(|e| e.to_string().contains("reduce.args")));
}

#[test]
fn a_reduce_step_may_run_a_module_or_a_script_of_its_own() {
    let dir = fixture();
    fs::write(dir.path().join("assemble.wasm"), b"\0asm").expect("write");
    fs::write(dir.path().join("plot.py"), b"print(2)").expect("write");
    fs::write(dir.path().join("sir.py"), b"print(1)").expect("write");
    let reduce = |job: &str, step: &str| {
        let text = format!("{job}[reduce]\n{step}");
        LocalJob::parse(&text, dir.path())
            .map(|job| (job.reduce.clone().expect("a reduce step"), job))
    };
    // A wasm module of its own.
    let (step, job) = reduce(VALID, "module = \"assemble.wasm\"\nargs = [\"x\"]\n").expect("valid");
    assert_eq!(step.module, Some(dir.path().join("assemble.wasm")));
    assert_eq!(
        (step.runtime, step.args.clone()),
        (None, vec!["x".to_string()])
    );
    let spec = spec_of(&job, 4);
    let wire = spec.reduce.as_ref().expect("reduce");
    assert!(wire.module.is_some() && wire.runtime.is_empty());
    check_spec(&spec).expect("accepted");
    // A Python script after a wasm job: the runtime is its own, and so are
    // the runtime's variables, on top of the job's.
    let (step, job) = reduce(
        &VALID.replace("[split]", "env = { MODEL = \"sir\" }\n[split]"),
        "runtime = \"python\"\nscript = \"plot.py\"\nargs = [\"/input\"]\n",
    )
    .expect("valid");
    assert_eq!(step.runtime, Some(&crate::runtime::PYTHON));
    assert_eq!(step.args, ["/input/plot.py", "/input"]);
    assert_eq!(
        step.inputs,
        [("plot.py".to_string(), dir.path().join("plot.py"))]
    );
    let env = step.env(&job.env);
    assert_eq!(
        env.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "MODEL"]
    );
    assert_eq!(job.env.len(), 1, "the job's own units see only the job's");
    let mut spec = spec_of(&job, 5);
    assert_eq!(
        spec.reduce.as_ref().map(|r| r.runtime.as_str()),
        Some("python")
    );
    assert!(
        check_spec(&spec).is_err_and(|e| e.to_string().contains("reduce.module")),
        "the coordinator fills a runtime's module in before it checks"
    );
    if let Some(reduce) = spec.reduce.as_mut() {
        reduce.module = Some(pb::BlobRef {
            hash: vec![9; 32],
            size: 1,
            chunk_root: Vec::new(),
        });
    }
    check_spec(&spec).expect("accepted once served");
    // On a Python job: a script of its own runs on the job's runtime; no
    // script runs the job's again, with the step's arguments.
    let python = VALID.replace(
        "module = \"unit.wasm\"\n",
        "runtime = \"python\"\nscript = \"sir.py\"\n",
    );
    let (step, _) = reduce(&python, "script = \"plot.py\"\n").expect("valid");
    assert_eq!(
        (step.runtime, step.args.as_slice()),
        (None, &["/input/plot.py".to_string()][..])
    );
    let (step, _) = reduce(&python, "args = [\"--table\"]\n").expect("valid");
    assert_eq!(step.args, ["/input/sir.py", "--table"]);
    assert!(step.inputs.is_empty());
    let (step, _) = reduce(&python, "script = \"sir.py\"\n").expect("the job's script again");
    assert!(step.inputs.is_empty(), "{step:?}");

    // And what is wrong, said.
    for (job, step, expected) in [
        (
            VALID,
            "module = \"assemble.wasm\"\nscript = \"plot.py\"\n",
            &["reduce.module", "not both"][..],
        ),
        (
            VALID,
            "script = \"plot.py\"\n",
            &["reduce.script", "a script runs on a runtime"][..],
        ),
        (
            VALID,
            "runtime = \"python\"\n",
            &["reduce.runtime", "goes with `script`"][..],
        ),
        (
            VALID,
            "runtime = \"cobol\"\nscript = \"plot.py\"\n",
            &["reduce.runtime", "\"cobol\""][..],
        ),
        (
            VALID,
            "module = \"assemble.wasm\"\nruntime = \"python\"\n",
            &["reduce.runtime", "no runtime"][..],
        ),
        (
            VALID,
            "script = \"../plot.py\"\nruntime = \"python\"\n",
            &["reduce.script"][..],
        ),
        (VALID, "module = \"table.bin\"\n", &["reduce.module"][..]),
        (
            &python,
            "script = \"plot.py\"\nmodule_signature = \"x.sig\"\n",
            &["reduce.module_signature"][..],
        ),
    ] {
        let error = reduce(job, step).expect_err(step).to_string();
        for fragment in expected {
            assert!(error.contains(fragment), "{step:?}: {error}");
        }
    }
    // An input named like a unit's folder would hide its outputs.
    fs::write(dir.path().join("7"), b"x").expect("write");
    let error = reduce(
        &VALID.replace("[\"table.bin\"]", "[\"table.bin\", \"7\"]"),
        "args = []\n",
    )
    .expect_err("a numeric name");
    assert!(error.to_string().contains("/input/7/"), "{error}");
    // The same name under another path: refused, not silently replaced.
    fs::create_dir(dir.path().join("other")).expect("mkdir");
    fs::write(dir.path().join("other/table.bin"), b"x").expect("write");
    let error = reduce(
        VALID,
        "runtime = \"python\"\nscript = \"other/table.bin\"\n",
    )
    .expect_err("a name taken");
    assert!(
        error.to_string().contains("another input of that name"),
        "{error}"
    );
}

#[test]
fn a_hostile_reduce_step_is_refused_on_the_wire() {
    let dir = fixture();
    let job = LocalJob::parse(&format!("{VALID}[reduce]\nargs = []\n"), dir.path()).expect("valid");
    let spec = spec_of(&job, 1);
    let blob = Some(pb::BlobRef {
        hash: vec![2; 32],
        size: 1,
        chunk_root: Vec::new(),
    });
    let named = |name: &str, blob: Option<pb::BlobRef>| pb::NamedBlob {
        name: name.into(),
        blob,
    };
    let cases: Vec<(pb::ReduceStep, &str)> = vec![
        (
            pb::ReduceStep {
                runtime: "perl".into(),
                module: blob.clone(),
                ..Default::default()
            },
            "\"perl\"",
        ),
        (
            pb::ReduceStep {
                runtime: "python".into(),
                ..Default::default()
            },
            "reduce.module",
        ),
        (
            pb::ReduceStep {
                module: blob.clone(),
                module_signature: vec![1; 10],
                ..Default::default()
            },
            "64",
        ),
        (
            pb::ReduceStep {
                module: Some(pb::BlobRef {
                    hash: vec![1; 5],
                    size: 1,
                    chunk_root: Vec::new(),
                }),
                ..Default::default()
            },
            "reduce.module",
        ),
        (
            pb::ReduceStep {
                inputs: vec![named("x.py", None)],
                ..Default::default()
            },
            "has no blob",
        ),
        (
            pb::ReduceStep {
                inputs: vec![named("../x.py", blob.clone())],
                ..Default::default()
            },
            "plain file name",
        ),
        (
            pb::ReduceStep {
                inputs: vec![named("12", blob.clone())],
                ..Default::default()
            },
            "/input/12/",
        ),
        (
            pb::ReduceStep {
                inputs: vec![named("table.bin", blob.clone())],
                ..Default::default()
            },
            "the job has an input of that name",
        ),
    ];
    for (step, expected) in cases {
        let hostile = pb::JobSpec {
            reduce: Some(step.clone()),
            ..spec.clone()
        };
        let error = check_spec(&hostile).expect_err(expected).to_string();
        assert!(error.contains(expected), "{step:?}: {error}");
    }
    // 63 variables of the job's own leave no room for the runtime's two.
    let hostile = pb::JobSpec {
        env: (0..63)
            .map(|i| pb::EnvVar {
                name: format!("V{i}"),
                value: String::new(),
            })
            .collect(),
        reduce: Some(pb::ReduceStep {
            runtime: "python".into(),
            module: blob,
            ..Default::default()
        }),
        ..spec
    };
    let error = check_spec(&hostile)
        .expect_err("too many variables")
        .to_string();
    assert!(error.contains("more than 64"), "{error}");
}

#[test]
fn a_python_job_becomes_the_runtime_its_script_and_its_environment() {
    let dir = fixture();
    fs::write(dir.path().join("sir.py"), b"print(1)").expect("write");
    fs::write(dir.path().join("deps.zip"), b"PK").expect("write");
    fs::write(dir.path().join("tabulate-0.9.0-py3-none-any.whl"), b"PK").expect("write");
    let text = VALID.replace(
        "module = \"unit.wasm\"\n",
        "runtime = \"python\"\nscript = \"sir.py\"\npackages = [\"deps.zip\", \"tabulate-0.9.0-py3-none-any.whl\"]\nenv = { MODEL = \"sir\", PYTHONHASHSEED = \"7\" }\n",
    );
    let job = LocalJob::parse(&text, dir.path()).expect("valid python spec");
    assert_eq!(job.module, None);
    assert_eq!(job.runtime, Some(&crate::runtime::PYTHON));
    assert_eq!(job.args, ["/input/sir.py", "{start}", "{end}"]);
    let names: Vec<&str> = job.inputs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "table.bin",
            "sir.py",
            "deps.zip",
            "tabulate-0.9.0-py3-none-any.whl"
        ]
    );
    let env: Vec<(&str, &str)> = job
        .env
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("PYTHONHASHSEED", "7"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            (
                "PYTHONPATH",
                "/input/deps.zip:/input/tabulate-0.9.0-py3-none-any.whl"
            ),
            ("MODEL", "sir"),
        ],
        "the runtime's variables first; the spec's override them"
    );
    let spec = spec_of(&job, 3);
    assert_eq!(spec.module, None, "the coordinator fills it in");
    assert_eq!(spec.runtime, "python");
    assert_eq!(spec.env.len(), 4);
    // As the coordinator sees it once it has put the runtime's module in.
    let served = pb::JobSpec {
        module: Some(pb::BlobRef {
            hash: vec![9; 32],
            size: 1,
            chunk_root: Vec::new(),
        }),
        ..spec
    };
    check_spec(&served).expect("the coordinator accepts it");
}

#[test]
fn bad_python_specs_say_what_is_wrong() {
    let python = |extra: &str| format!("runtime = \"python\"\nscript = \"sir.py\"\n{extra}");
    for (to, expected) in [
        (
            "module = \"unit.wasm\"\nruntime = \"python\"\n".to_string(),
            &["runtime", "not both"][..],
        ),
        (String::new(), &["module", "runtime = \"python\""][..]),
        (
            "runtime = \"cobol\"\n".to_string(),
            &["runtime", "\"cobol\"", "\"python\""][..],
        ),
        (
            "runtime = \"python\"\n".to_string(),
            &["script", "missing"][..],
        ),
        (python(""), &["script", "sir.py is not a readable file"][..]),
        (
            "module = \"unit.wasm\"\nscript = \"table.bin\"\n".to_string(),
            &["script", "runtime"][..],
        ),
        (
            "runtime = \"python\"\nscript = \"table.bin\"\npackages = [\"data/a.txt\"]\n"
                .to_string(),
            &["packages", ".zip", ".whl"][..],
        ),
        (
            "runtime = \"python\"\nscript = \"../outside.py\"\n".to_string(),
            &["script"][..],
        ),
        (
            "runtime = \"python\"\nscript = \"table.bin\"\nmodule_signature = \"x.sig\"\n"
                .to_string(),
            &["module_signature", "no module of its own"][..],
        ),
        (
            "module = \"unit.wasm\"\nenv = { \"1BAD\" = \"x\" }\n".to_string(),
            &["env", "1BAD", "not a variable name"][..],
        ),
        (
            "module = \"unit.wasm\"\nenv = { \"A=B\" = \"x\" }\n".to_string(),
            &["env", "not a variable name"][..],
        ),
        (
            "module = \"unit.wasm\"\nenv = { A = \"nul\\u0000\" }\n".to_string(),
            &["env", "NUL"][..],
        ),
        (
            format!(
                "module = \"unit.wasm\"\nenv = {{ A = \"{}\" }}\n",
                "x".repeat(5000)
            ),
            &["env", "4096"][..],
        ),
    ] {
        check("module = \"unit.wasm\"\n", &to, expected);
    }
    // script = "../outside.py" must name a file that exists to reach the
    // inside check.
    let dir = fixture();
    let outside = dir.path().parent().expect("parent").join("outside.py");
    fs::write(&outside, b"print(1)").expect("write");
    let text = VALID.replace(
        "module = \"unit.wasm\"\n",
        "runtime = \"python\"\nscript = \"../outside.py\"\n",
    );
    let error = LocalJob::parse(&text, dir.path()).expect_err("outside the folder");
    fs::remove_file(&outside).ok();
    assert!(error.to_string().contains("script"), "{error}");
}

#[test]
fn environments_are_bounded_in_number_and_names_are_unique() {
    let many: Vec<(String, String)> = (0..=MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), String::new()))
        .collect();
    let error =
        check_env(many.iter().map(|(n, v)| (n.as_str(), v.as_str()))).expect_err("too many");
    assert!(error.to_string().contains("more than 64"), "{error}");
    let error = check_env([("A", "1"), ("A", "2")].into_iter()).expect_err("twice");
    assert!(error.to_string().contains("A is set twice"), "{error}");
    check_env([("_A1", ""), ("PYTHONPATH", "/input/x.zip")].into_iter()).expect("valid");
    assert!(check_env([("", "x")].into_iter()).is_err());
}
