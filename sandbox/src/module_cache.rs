//! Compiled modules, cached in memory and on disk by module hash and the
//! engine's settings, so a later unit of a module already seen (or a
//! second `cobble-worker exec` of it) starts without compiling.
//!
//! Only `.wasm` travels over the network and is signed. Precompiled code is
//! loaded only from this worker's own cache directory, written by this
//! worker: wasmtime's deserialize trusts its input completely.

use super::{PreparedModule, UnitState};
use crate::error::{Error, Result};
use cobble_core::BlobHash;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::{Engine, Linker, Module};

pub struct ModuleCache {
    dir: Option<PathBuf>,
    /// Names the engine's settings and wasmtime's version in file names:
    /// engines that cannot share compiled code never read each other's
    /// files, so two of them on one directory do not evict each other.
    engine_key: String,
    loaded: Mutex<HashMap<BlobHash, PreparedModule>>,
    /// One compile per module at a time: two units of a new module that
    /// start together (a 26 MB runtime takes seconds) compile it once.
    compiling: Mutex<HashMap<BlobHash, Arc<Mutex<()>>>>,
}

/// A module's WebAssembly: a file read only if it must be compiled, or
/// bytes already in hand.
pub enum Wasm<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// Where a prepared module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Read from the disk cache.
    Disk,
    /// Already in memory.
    Memory,
}

impl ModuleCache {
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(Error::io(format!(
                "creating module cache {}",
                dir.display()
            )))?;
        }
        if let Some(dir) = &dir {
            remove_stale(dir);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = format!("{:016x}", std::hash::Hasher::finish(&hasher));
        Ok(ModuleCache {
            dir,
            engine_key,
            loaded: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
        })
    }

    /// The prepared module: from memory, from the disk cache, or compiled
    /// now, once however many callers ask together. Blocks for as long as
    /// compiling takes (seconds for a large module): call it off the async
    /// runtime's threads.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        linker: &Linker<UnitState>,
        hash: &BlobHash,
        wasm: Wasm<'_>,
    ) -> Result<(PreparedModule, Origin)> {
        if let Some(pre) = self.lock().get(hash) {
            return Ok((pre.clone(), Origin::Memory));
        }
        let gate = self.gates().entry(*hash).or_default().clone();
        let _one_compile = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Whoever held the gate before may have prepared it meanwhile.
        if let Some(pre) = self.lock().get(hash) {
            return Ok((pre.clone(), Origin::Memory));
        }
        let prepared = self.load_or_compile(engine, linker, hash, wasm);
        self.gates().remove(hash);
        prepared
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        linker: &Linker<UnitState>,
        hash: &BlobHash,
        wasm: Wasm<'_>,
    ) -> Result<(PreparedModule, Origin)> {
        let (module, origin) = match self.load_compiled(engine, hash) {
            Some(module) => (module, Origin::Disk),
            None => {
                let module = match wasm {
                    Wasm::File(path) => compile(
                        engine,
                        &std::fs::read(path)
                            .map_err(Error::io(format!("reading module {}", path.display())))?,
                    )?,
                    Wasm::Bytes(bytes) => compile(engine, bytes)?,
                };
                self.store_compiled(hash, &module);
                (module, Origin::Compiled)
            }
        };
        let pre = instantiate_pre(linker, &module)?;
        self.lock().insert(*hash, pre.clone());
        Ok((pre, origin))
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, Arc<Mutex<()>>>> {
        // A panic while holding this lock leaves a plain map behind.
        self.compiling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, PreparedModule>> {
        // A panic while holding this lock leaves a plain map behind; keep using it.
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path_of(&self, hash: &BlobHash) -> Option<PathBuf> {
        self.dir
            .as_ref()
            // v3: modules compiled with the pacing hooks as well.
            .map(|dir| dir.join(format!("{hash}.{}{CURRENT}", self.engine_key)))
    }

    fn load_compiled(&self, engine: &Engine, hash: &BlobHash) -> Option<Module> {
        let path = self.path_of(hash)?;
        // Read into memory rather than mmap the file: a mapped file that
        // anything truncates later would kill the worker with SIGBUS.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the file is in this worker's private cache directory and
        // was written by `store_compiled` from a module this worker compiled
        // itself; wasmtime also checks that it matches this engine's settings.
        #[allow(unsafe_code)]
        let loaded = unsafe { Module::deserialize(engine, &bytes) };
        match loaded {
            Ok(module) => Some(module),
            Err(error) => {
                // A stale or torn cache entry: drop it and compile afresh.
                tracing::warn!(%hash, %error, "discarding unusable compiled module");
                std::fs::remove_file(&path).ok();
                None
            }
        }
    }

    fn store_compiled(&self, hash: &BlobHash, module: &Module) {
        let Some(path) = self.path_of(hash) else {
            return;
        };
        let written = module
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                // A crash never leaves a torn file under the final name; a
                // lost one is compiled again, so no fsync.
                cobble_core::durable::replace(&path, &bytes, cobble_core::durable::How::CACHE)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(%hash, %error, "cannot cache compiled module");
        }
    }
}

/// The file name ending of this layout's compiled modules.
const CURRENT: &str = ".v3.cwasm";

/// Removes compiled modules of an earlier layout (compiled without the
/// current hooks): never loaded again, they would only hold disk.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".cwasm") && !name.ends_with(CURRENT) {
            std::fs::remove_file(entry.path()).ok();
        }
    }
}

/// Compiles a module, its WASI calls routed through the hooks.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module> {
    let invalid = |e: wasmtime::Error| {
        let message = format!("{e:#}");
        Error::InvalidModule(message.lines().next().unwrap_or_default().to_string())
    };
    let rewritten = match crate::hooks::rewrite(wasm) {
        Ok(rewritten) => rewritten,
        Err(reason) => {
            // An invalid module gets the engine's own words; a valid one
            // the hooks cannot wrap is refused all the same, never run
            // without them (a `sleep` would then hold its thread).
            Module::validate(engine, wasm).map_err(invalid)?;
            return Err(Error::InvalidModule(format!(
                "cannot instrument the module: {reason}"
            )));
        }
    };
    Module::from_binary(engine, &rewritten).map_err(invalid)
}

pub fn instantiate_pre(linker: &Linker<UnitState>, module: &Module) -> Result<PreparedModule> {
    if module.get_export("_start").is_none() {
        return Err(Error::NotACommand);
    }
    linker
        .instantiate_pre(module)
        .map_err(|e| Error::InvalidModule(format!("{e:#}")))
}
