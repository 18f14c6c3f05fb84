//! Plain, obvious Rust, the way a researcher writes it before anyone
//! tunes it for Cobble: no unrolling, no intrinsics, no tricks. The
//! benchmark runs each program natively and in the worker's sandbox, so
//! what it measures is what Cobble costs code nobody tuned.

use std::io::Read;

/// Calls `each` with every piece of `path`, read in `buffer`-byte reads.
pub fn for_each_read(
    path: &str,
    buffer: usize,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; buffer];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        each(&buf[..n]);
    }
}

/// The program's N arguments, or a usage line on stderr.
pub fn args<const N: usize>(usage: &str) -> Option<[String; N]> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match <[String; N]>::try_from(args) {
        Ok(args) => Some(args),
        Err(_) => {
            eprintln!("usage: {usage}");
            None
        }
    }
}
