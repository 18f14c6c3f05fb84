//! Untuned byte loop: the FNV-1a hash of a file, one byte at a time, read
//! in 64 KiB pieces. Usage: `untuned-fnv FILE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some([path]) = untuned::args::<1>("untuned-fnv FILE") else {
        return ExitCode::from(2);
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let read = untuned::for_each_read(&path, 64 << 10, |piece| {
        for &byte in piece {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    });
    match read {
        Ok(bytes) => {
            println!("fnv1a64 {hash:016x} over {bytes} bytes");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fnv: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
