//! An epidemic (SIR) model swept over its infection rate, as a Cobble job.
//!
//! `sir sweep START END`: for each step i in [START, END) the infection rate
//! is beta = 0.10 + 0.01 * i (recovery rate 0.10, one million people, ten
//! infected on day 0); prints one CSV line per rate: the peak of
//! infections, the day it comes, and how many were ever infected.
//!
//! `sir reduce INPUT OUTPUT`: the job's reduce step. INPUT holds one folder
//! per unit (0/, 1/, ...) with its stdout; writes OUTPUT/sweep.csv.

use std::path::Path;
use std::process::ExitCode;

const POPULATION: f64 = 1_000_000.0;
const GAMMA: f64 = 0.10;
const DAYS: u32 = 365;
const STEPS_PER_DAY: u32 = 10;

fn simulate(beta: f64) -> (f64, u32, f64) {
    let (mut s, mut i) = (POPULATION - 10.0, 10.0);
    let dt = 1.0 / f64::from(STEPS_PER_DAY);
    let (mut peak, mut peak_day) = (i, 0);
    for step in 0..DAYS * STEPS_PER_DAY {
        let infections = beta * s * i / POPULATION * dt;
        let recoveries = GAMMA * i * dt;
        (s, i) = (s - infections, i + infections - recoveries);
        if i > peak {
            (peak, peak_day) = (i, step / STEPS_PER_DAY);
        }
    }
    (peak, peak_day, POPULATION - s)
}

fn sweep(start: u32, end: u32) {
    for index in start..end {
        let beta = 0.10 + 0.01 * f64::from(index);
        let (peak, day, ever) = simulate(beta);
        println!("{beta:.2},{peak:.0},{day},{ever:.0}");
    }
}

fn reduce(input: &Path, output: &Path) -> Result<(), String> {
    let mut units: Vec<u32> = std::fs::read_dir(input)
        .map_err(|e| format!("{}: {e}", input.display()))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    units.sort();
    let mut table = String::from("beta,peak_infected,peak_day,ever_infected\n");
    for unit in &units {
        let path = input.join(unit.to_string()).join("stdout");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        table.push_str(&text);
    }
    let path = output.join("sweep.csv");
    std::fs::write(&path, &table).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{} units, {} rates: wrote sweep.csv", units.len(), table.lines().count() - 1);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["sweep", start, end] => match (start.parse(), end.parse()) {
            (Ok(start), Ok(end)) => {
                sweep(start, end);
                Ok(())
            }
            _ => Err(format!("START and END are whole numbers: {start} {end}")),
        },
        ["reduce", input, output] => reduce(Path::new(input), Path::new(output)),
        _ => Err("usage: sir sweep START END | sir reduce INPUT OUTPUT".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
