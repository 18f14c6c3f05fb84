//! The output cap, enforced at write time. Before a module is compiled,
//! its imports of the WASI functions that write, grow, open, renumber and
//! close files are routed through small wasm wrappers added to the module:
//! each calls a host hook (`cobble:output-cap`) with the call's arguments,
//! then the real WASI function. The hooks see the guest's memory (they are
//! called from wasm), count the bytes written to files under `/output`,
//! and trap the write that would cross `max_output_bytes` before any of
//! its bytes reach the disk. Polling `/output` let a fast writer put
//! 74-427 MiB on disk against a 64 MiB cap first.
//!
//! Why rewrite the module rather than shadow the functions in the linker:
//! wasmtime-wasi's p1 functions find the guest's memory through their
//! caller, and a host function calling them has none.
//!
//! The count is an upper bound (a rewrite counts again); near the cap it
//! is replaced by the directory's real size, so rewriting a small file is
//! never taken for a large output. `/checkpoint`, rewritten by design,
//! keeps the periodic check.

use crate::UnitState;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasm_encoder::{Function, Instruction, ValType};
use wasmtime::{Caller, Extern, Linker};

const WASI: &str = "wasi_snapshot_preview1";
const HOOKS: &str = "cobble:output-cap";
/// Wrapped functions, and whether the hook also needs the result (to learn
/// the descriptors a call creates or ends).
const WRAPPED: [(&str, bool); 7] = [
    ("fd_write", false),
    ("fd_pwrite", false),
    ("fd_filestat_set_size", false),
    ("fd_allocate", false),
    ("path_open", true),
    ("fd_close", true),
    ("fd_renumber", true),
];
/// The `/output` preopen's descriptor: preopens are numbered from 3 in the
/// order `build_wasi` adds them, `/input` first.
const OUTPUT_PREOPEN: u32 = 4;

/// One wrapped import of the module being rewritten.
struct Target {
    name: &'static str,
    wants_result: bool,
    /// The import's function index and type.
    func: u32,
    ty: u32,
    params: Vec<ValType>,
}

struct Rewriter {
    imported_funcs: u32,
    types: u32,
    targets: Vec<Target>,
    /// Import function index -> its wrapper's index.
    wrapper_of: HashMap<u32, u32>,
}

impl Rewriter {
    /// New imports: each target's hook; the `after` hooks take the result too.
    fn hook_count(&self) -> u32 {
        self.targets.len() as u32
    }
}

impl Reencode for Rewriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, ReencodeError<Self::Error>> {
        Ok(match self.wrapper_of.get(&func) {
            Some(wrapper) => *wrapper,
            None if func < self.imported_funcs => func,
            None => func + self.hook_count(),
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        utils::parse_type_section(self, types, section)?;
        // One hook type per target: its parameters (and the i32 result for
        // the hooks that want it), returning nothing.
        for target in &self.targets {
            let mut params = target.params.clone();
            if target.wants_result {
                params.push(ValType::I32);
            }
            types.ty().function(params, []);
        }
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        utils::parse_import_section(self, imports, section)?;
        for (index, target) in self.targets.iter().enumerate() {
            imports.import(
                HOOKS,
                target.name,
                wasm_encoder::EntityType::Function(self.types + index as u32),
            );
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        utils::parse_function_section(self, functions, section)?;
        for target in &self.targets {
            functions.function(target.ty);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        utils::parse_code_section(self, code, section)?;
        for (index, target) in self.targets.iter().enumerate() {
            let hook = self.imported_funcs + index as u32;
            let arity = target.params.len() as u32;
            let mut body = Function::new([(1, ValType::I32)]);
            let push_params = |body: &mut Function| {
                for param in 0..arity {
                    body.instruction(&Instruction::LocalGet(param));
                }
            };
            if target.wants_result {
                push_params(&mut body);
                body.instruction(&Instruction::Call(target.func));
                body.instruction(&Instruction::LocalSet(arity));
                push_params(&mut body);
                body.instruction(&Instruction::LocalGet(arity));
                body.instruction(&Instruction::Call(hook));
                body.instruction(&Instruction::LocalGet(arity));
            } else {
                push_params(&mut body);
                body.instruction(&Instruction::Call(hook));
                push_params(&mut body);
                body.instruction(&Instruction::Call(target.func));
            }
            body.instruction(&Instruction::End);
            code.function(&body);
        }
        Ok(())
    }
}

/// Routes the module's WASI file writes through the output-cap hooks.
/// A module that imports none of them is returned as it is.
pub(crate) fn rewrite(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let mut func_types: Vec<Vec<ValType>> = Vec::new();
    let mut results_ok: Vec<bool> = Vec::new();
    let mut imported_funcs = 0u32;
    let mut defined_funcs = 0u32;
    let mut found: Vec<(u32, u32, &'static str, bool)> = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            wasmparser::Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.map_err(|e| e.to_string())?;
                    let params = ty
                        .params()
                        .iter()
                        .map(|p| match p {
                            wasmparser::ValType::I32 => Ok(ValType::I32),
                            wasmparser::ValType::I64 => Ok(ValType::I64),
                            wasmparser::ValType::F32 => Ok(ValType::F32),
                            wasmparser::ValType::F64 => Ok(ValType::F64),
                            other => Err(format!("unsupported parameter type {other:?}")),
                        })
                        .collect::<Result<Vec<_>, _>>();
                    results_ok.push(ty.results() == [wasmparser::ValType::I32]);
                    func_types.push(params.unwrap_or_default());
                }
            }
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    if let wasmparser::TypeRef::Func(ty) = import.ty {
                        if import.module == WASI
                            && let Some((name, wants)) =
                                WRAPPED.iter().find(|(name, _)| *name == import.name)
                        {
                            found.push((imported_funcs, ty, name, *wants));
                        }
                        imported_funcs += 1;
                    }
                }
            }
            wasmparser::Payload::FunctionSection(reader) => defined_funcs = reader.count(),
            _ => {}
        }
    }
    if found.is_empty() {
        return Ok(wasm.to_vec());
    }
    let hooks = found.len() as u32;
    let mut targets = Vec::new();
    let mut wrapper_of = HashMap::new();
    for (position, (func, ty, name, wants_result)) in found.into_iter().enumerate() {
        let params = func_types
            .get(ty as usize)
            .cloned()
            .ok_or_else(|| format!("{name} has no type"))?;
        if !results_ok.get(ty as usize).copied().unwrap_or(false) {
            return Err(format!("{name} is imported with the wrong type"));
        }
        wrapper_of.insert(
            func,
            imported_funcs + hooks + defined_funcs + position as u32,
        );
        targets.push(Target {
            name,
            wants_result,
            func,
            ty,
            params,
        });
    }
    let mut rewriter = Rewriter {
        imported_funcs,
        types: func_types.len() as u32,
        targets,
        wrapper_of,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| format!("{e:?}"))?;
    Ok(module.finish())
}

/// Per-run accounting of what a unit wrote under `/output`.
pub(crate) struct WriteCap {
    limit: u64,
    output_dir: PathBuf,
    /// Descriptors of files and directories under `/output`.
    tracked: HashSet<u32>,
    /// Bytes written so far, counted generously.
    counted: u64,
    /// Set when a write was refused: the run failed for its output size.
    pub(crate) exceeded: bool,
}

impl WriteCap {
    pub(crate) fn new(limit: u64, output_dir: PathBuf) -> WriteCap {
        WriteCap {
            limit,
            output_dir,
            tracked: HashSet::from([OUTPUT_PREOPEN]),
            counted: 0,
            exceeded: false,
        }
    }

    /// Whether `extra` more bytes fit; near the cap, measures for real.
    fn admit(&mut self, extra: u64) -> bool {
        if self.counted.saturating_add(extra) <= self.limit {
            self.counted += extra;
            return true;
        }
        self.counted = crate::dir_size(&self.output_dir);
        if self.counted.saturating_add(extra) <= self.limit {
            self.counted += extra;
            return true;
        }
        self.exceeded = true;
        false
    }

    fn refuse(&mut self) -> wasmtime::Error {
        self.exceeded = true;
        wasmtime::format_err!("unit wrote more than its {}-byte output limit", self.limit)
    }
}

/// Adds the hooks the rewritten modules import.
pub(crate) fn add_hooks(linker: &mut Linker<UnitState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        HOOKS,
        "fd_write",
        |mut caller: Caller<'_, UnitState>, fd: i32, iovs: i32, count: i32, _written: i32| {
            check_write(&mut caller, fd, iovs, count)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_pwrite",
        |mut caller: Caller<'_, UnitState>,
         fd: i32,
         iovs: i32,
         count: i32,
         offset: i64,
         _written: i32| {
            check_write(&mut caller, fd, iovs, count)?;
            check_growth(&mut caller, fd, offset.max(0) as u64)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, UnitState>, fd: i32, size: i64| {
            check_growth(&mut caller, fd, size.max(0) as u64)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_allocate",
        |mut caller: Caller<'_, UnitState>, fd: i32, offset: i64, length: i64| {
            let end = (offset.max(0) as u64).saturating_add(length.max(0) as u64);
            check_growth(&mut caller, fd, end)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "path_open",
        |mut caller: Caller<'_, UnitState>,
         dir: i32,
         _dirflags: i32,
         _path: i32,
         _path_len: i32,
         _oflags: i32,
         _base: i64,
         _inheriting: i64,
         _fdflags: i32,
         opened_at: i32,
         errno: i32| {
            if errno == 0
                && caller.data().writes.tracked.contains(&(dir as u32))
                && let Some(opened) = read_u32(&mut caller, opened_at as u32)
            {
                caller.data_mut().writes.tracked.insert(opened);
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_close",
        |mut caller: Caller<'_, UnitState>, fd: i32, errno: i32| {
            if errno == 0 && fd as u32 != OUTPUT_PREOPEN {
                caller.data_mut().writes.tracked.remove(&(fd as u32));
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_renumber",
        |mut caller: Caller<'_, UnitState>, from: i32, to: i32, errno: i32| {
            if errno == 0 {
                let tracked = &mut caller.data_mut().writes.tracked;
                if tracked.remove(&(from as u32)) {
                    tracked.insert(to as u32);
                } else {
                    tracked.remove(&(to as u32));
                }
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Counts a write of the iovecs at `iovs` to `fd`, refusing it past the cap.
fn check_write(
    caller: &mut Caller<'_, UnitState>,
    fd: i32,
    iovs: i32,
    count: i32,
) -> wasmtime::Result<()> {
    if !caller.data().writes.tracked.contains(&(fd as u32)) {
        return Ok(());
    }
    // A malformed iovec list is left to WASI, which answers EFAULT.
    let Some(bytes) = iovec_total(caller, iovs as u32, count as u32) else {
        return Ok(());
    };
    let writes = &mut caller.data_mut().writes;
    if writes.admit(bytes) {
        Ok(())
    } else {
        Err(writes.refuse())
    }
}

/// Refuses making a file under `/output` `size` bytes long past the cap.
fn check_growth(caller: &mut Caller<'_, UnitState>, fd: i32, size: u64) -> wasmtime::Result<()> {
    let writes = &mut caller.data_mut().writes;
    if !writes.tracked.contains(&(fd as u32)) || size <= writes.limit {
        return Ok(());
    }
    Err(writes.refuse())
}

fn memory(caller: &mut Caller<'_, UnitState>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

fn read_u32(caller: &mut Caller<'_, UnitState>, at: u32) -> Option<u32> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let start = at as usize;
    let bytes = data.get(start..start.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The total length of `count` iovecs (`{ buf: u32, len: u32 }`) at `at`.
fn iovec_total(caller: &mut Caller<'_, UnitState>, at: u32, count: u32) -> Option<u64> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let mut total = 0u64;
    for index in 0..count as usize {
        let start = (at as usize).checked_add(index.checked_mul(8)?)?;
        let entry = data.get(start..start.checked_add(8)?)?;
        total += u64::from(u32::from_le_bytes(entry[4..8].try_into().ok()?));
    }
    Some(total)
}
