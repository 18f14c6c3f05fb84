//! Untuned integer loop: the longest Collatz chain for starts in
//! `[start, end)`, written the obvious way. Usage: `untuned-collatz START END`.

use std::process::ExitCode;

fn steps(mut n: u64) -> u32 {
    let mut count = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        count += 1;
    }
    count
}

fn main() -> ExitCode {
    let Some([start, end]) = untuned::args::<2>("untuned-collatz START END") else {
        return ExitCode::from(2);
    };
    let (Ok(start), Ok(end)) = (start.parse::<u64>(), end.parse::<u64>()) else {
        eprintln!("collatz: START and END must be whole numbers");
        return ExitCode::from(2);
    };
    let mut best = (0, 0);
    for n in start.max(1)..end {
        let s = steps(n);
        if s > best.1 {
            best = (n, s);
        }
    }
    println!(
        "longest chain in [{start}, {end}): {} ({} steps)",
        best.0, best.1
    );
    ExitCode::SUCCESS
}
