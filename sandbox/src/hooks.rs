//! Host hooks on a unit's WASI calls. Before a module is compiled, its
//! imports of the WASI functions listed in [`WRAPPED`] are routed through
//! small wasm wrappers added to the module: each calls a host hook
//! (`cobble:hooks`) with the call's arguments, then the real WASI
//! function (or the function first and the hook after, for the hooks that
//! need its result). Two users:
//! - `output_cap`: counts the bytes written under `/output` and traps the
//!   write that would cross the cap before any of its bytes reach the disk;
//! - `pacing`: makes a unit that does little but I/O yield as often as a
//!   computing one, and keeps a `sleep` off the thread.
//!
//! Why rewrite the module rather than shadow the functions in the linker:
//! wasmtime-wasi's p1 functions find the guest's memory through their
//! caller, and a host function calling them has none.

use crate::UnitState;
use std::collections::HashMap;
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasm_encoder::{Function, Instruction, ValType};
use wasmtime::{Caller, Extern, Linker};

const WASI: &str = "wasi_snapshot_preview1";
pub(crate) const HOOKS: &str = "cobble:hooks";
/// Wrapped functions, and whether the hook also needs the result (to learn
/// the descriptors a call creates or ends).
const WRAPPED: [(&str, bool); 10] = [
    ("fd_write", false),
    ("fd_pwrite", false),
    ("fd_filestat_set_size", false),
    ("fd_allocate", false),
    ("path_open", true),
    ("fd_close", true),
    ("fd_renumber", true),
    ("fd_read", false),
    ("fd_pread", false),
    ("poll_oneoff", false),
];

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

/// Routes the module's wrapped WASI imports through the hooks.
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

/// Adds the hooks the rewritten modules import.
pub(crate) fn add_hooks(linker: &mut Linker<UnitState>) -> wasmtime::Result<()> {
    crate::output_cap::add_hooks(linker)?;
    crate::pacing::add_hooks(linker)
}

pub(crate) fn memory(caller: &mut Caller<'_, UnitState>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

pub(crate) fn read_u32(caller: &mut Caller<'_, UnitState>, at: u32) -> Option<u32> {
    let memory = memory(caller)?;
    bytes_at(memory.data(&*caller), at as usize).map(u32::from_le_bytes)
}

/// The `N` bytes of `data` from `at`, if all are there: a unit's pointers
/// are read through this, never by indexing.
pub(crate) fn bytes_at<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}
