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
        let mut words = piece.chunks_exact(8);
        for word in &mut words {
            let value = u64::from_le_bytes(word.try_into().unwrap_or_default());
            sum = sum.wrapping_add(value);
            xor ^= value;
        }
        // A last piece not a whole number of words: zero-padded.
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        let value = u64::from_le_bytes(last);
        sum = sum.wrapping_add(value);
        xor ^= value;
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
