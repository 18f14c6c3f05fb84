//! I/O-bound: a light checksum of a file (the sum and the xor of its
//! little-endian 64-bit words) read in 1 MiB pieces, so the time goes to
//! reading. Usage: `untuned-checksum FILE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some([path]) = untuned::args::<1>("untuned-checksum FILE") else {
        return ExitCode::from(2);
    };
    let (mut sum, mut xor) = (0u64, 0u64);
    let read = untuned::for_each_read(&path, 1 << 20, |piece| {
        for word in piece.chunks(8) {
            let mut bytes = [0u8; 8];
            bytes[..word.len()].copy_from_slice(word);
            let value = u64::from_le_bytes(bytes);
            sum = sum.wrapping_add(value);
            xor ^= value;
        }
    });
    match read {
        Ok(bytes) => {
            println!("sum {sum:016x} xor {xor:016x} over {bytes} bytes");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("checksum: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
