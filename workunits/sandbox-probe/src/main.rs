//! Test work unit: probes the sandbox's walls and misbehaves on request.
//!
//! `sandbox-probe COMMAND [ARGS]`; each command prints what it observed, so
//! tests assert on the unit's own view of the sandbox.

use std::io::Write;

/// Preopened directories, in the order the sandbox maps them.
const OUTPUT_FD: u32 = 4;
const CHECKPOINT_FD: u32 = 5;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        // Runaway work: never returns.
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        // Unbounded recursion: exhausts the stack.
        "recurse" => println!("depth {}", recurse(std::hint::black_box(1))),
        // Asks for MIB mebibytes, 16 MiB at a time (wasm32's usize cannot
        // even express 4 GiB in one piece), touching every page.
        "alloc" => {
            let mib: u64 = arg(1).parse().unwrap_or(4096);
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib.div_ceil(16) {
                let mut block = vec![0u8; 16 << 20];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                blocks.push(block);
            }
            println!("allocated {} MiB", blocks.len() * 16);
        }
        // Reads a whole input and prints its FNV-1a digest, so tests can
        // check every byte arrived, however it travelled.
        "digest" => match std::fs::read(arg(1)) {
            Ok(bytes) => {
                let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                println!("fnv1a64 {digest:016x}");
            }
            Err(error) => println!("denied: {error}"),
        },
        // Tries to read a path and reports what happened.
        "read" => match std::fs::read(arg(1)) {
            Ok(bytes) => println!("read {} bytes", bytes.len()),
            Err(error) => println!("denied: {error}"),
        },
        // Lists a directory.
        "list" => match std::fs::read_dir(arg(1)) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                println!("{}", names.join(","));
            }
            Err(error) => println!("denied: {error}"),
        },
        // Tries to create a file at a path.
        "write" => match std::fs::write(arg(1), arg(2)) {
            Ok(()) => println!("wrote"),
            Err(error) => println!("denied: {error}"),
        },
        // Writes N bytes to a file in 64 KiB writes (creating its
        // directories), then reports how far it got.
        "fill" => {
            let path = std::path::Path::new(arg(1));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).ok();
            }
            let n: u64 = arg(2).parse().unwrap_or(0);
            let result = std::fs::File::create(path).and_then(|mut file| {
                let chunk = vec![b'y'; 64 << 10];
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    file.write_all(&chunk[..take])?;
                    left -= take as u64;
                }
                Ok(())
            });
            match result {
                Ok(()) => println!("filled {n}"),
                Err(error) => println!("denied: {error}"),
            }
        }
        // Makes a file N bytes long without writing them (a sparse file).
        "sparse" => {
            let result = std::fs::File::create(arg(1))
                .and_then(|file| file.set_len(arg(2).parse().unwrap_or(0)));
            match result {
                Ok(()) => println!("sized"),
                Err(error) => println!("denied: {error}"),
            }
        }
        // Rewrites a file of N bytes TIMES times: many bytes written, few kept.
        "rewrite" => {
            let n: usize = arg(2).parse().unwrap_or(0);
            let times: usize = arg(3).parse().unwrap_or(1);
            let data = vec![b'z'; n];
            let all = (0..times).all(|_| std::fs::write(arg(1), &data).is_ok());
            println!("rewrote {}", if all { times } else { 0 });
        }
        // Writes N bytes to stdout.
        "spam" => {
            let n: usize = arg(1).parse().unwrap_or(0);
            let chunk = [b'x'; 4096];
            let mut out = std::io::stdout().lock();
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len());
                if out.write_all(&chunk[..take]).is_err() {
                    std::process::exit(3);
                }
                left -= take;
            }
        }
        // Leaves a link to a host file in /output.
        "symlink" => println!(
            "symlink errno: {}",
            symlink_in(OUTPUT_FD, "../../../../etc/passwd", "link")
        ),
        // Makes its progress file a link to a host file (`arg(1)`, relative
        // to /checkpoint), for the worker to follow if it would.
        "symlink-progress" => println!(
            "symlink errno: {}",
            symlink_in(CHECKPOINT_FD, arg(1), "progress")
        ),
        // What a unit can learn of its host: environment, time, randomness.
        "observe" => {
            let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut random = [0u8; 8];
            let random_ok = getrandom_p1(&mut random);
            println!(
                "env={} now={now} random={random_ok}:{random:?} args={args:?}",
                env.len()
            );
        }
        // I/O and hardly any computing: reads FILE whole in 1 MiB reads,
        // PASSES times (0: forever). Each pass leaks 64 KiB, so its memory
        // shows it moving without a write (a write could yield by itself).
        "reread" => {
            let passes: u64 = arg(2).parse().unwrap_or(0);
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while passes == 0 || done < passes {
                let Ok(mut file) = std::fs::File::open(arg(1)) else {
                    println!("denied");
                    return;
                };
                while matches!(std::io::Read::read(&mut file, &mut buf), Ok(n) if n > 0) {}
                std::mem::forget(std::hint::black_box(Vec::<u8>::with_capacity(64 << 10)));
                done += 1;
            }
            println!("reread {done}");
        }
        // Sleeps MILLIS milliseconds, then says so.
        "sleep" => {
            let millis: u64 = arg(1).parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(millis));
            println!("slept {millis}");
        }
        "exit" => std::process::exit(arg(1).parse().unwrap_or(1)),
        "panic" => panic!("probe asked to panic"),
        other => {
            eprintln!("unknown probe command {other:?}");
            std::process::exit(2);
        }
    }
}

/// Calls WASI's `random_get` import directly, to see what the host gives.
#[cfg(target_os = "wasi")]
#[allow(unsafe_code)]
fn getrandom_p1(buf: &mut [u8]) -> bool {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }
    // SAFETY: the pointer and length describe a live, writable buffer.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    errno == 0
}

/// Natively there is no sandbox to probe.
#[cfg(not(target_os = "wasi"))]
fn getrandom_p1(_buf: &mut [u8]) -> bool {
    false
}

/// Creates a symlink inside `/output` through WASI's `path_symlink`; the
/// worker maps `/input` first and `/output` second, so `/output` is fd 4.
#[cfg(target_os = "wasi")]
#[allow(unsafe_code)]
fn symlink_in(dir_fd: u32, target: &str, name: &str) -> u16 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn path_symlink(
            old: *const u8,
            old_len: usize,
            fd: u32,
            new: *const u8,
            new_len: usize,
        ) -> u16;
    }
    // SAFETY: both pointers and lengths describe live string slices.
    unsafe {
        path_symlink(
            target.as_ptr(),
            target.len(),
            dir_fd,
            name.as_ptr(),
            name.len(),
        )
    }
}

#[cfg(not(target_os = "wasi"))]
fn symlink_in(_dir_fd: u32, _target: &str, _name: &str) -> u16 {
    0
}

/// Recurses until the stack runs out; the black box keeps it a real call.
fn recurse(depth: u64) -> u64 {
    // Never true: the stack runs out long before.
    if depth == u64::MAX {
        return 0;
    }
    let mut frame = [depth; 16];
    frame[(depth % 16) as usize] = std::hint::black_box(recurse(depth + 1));
    frame.iter().sum()
}
