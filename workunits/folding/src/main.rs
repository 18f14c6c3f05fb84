//! Example work unit: protein folding in miniature.
//!
//! The 2D HP model (Dill, 1985): a chain of hydrophobic (H) and polar (P)
//! residues lies on a square lattice without crossing itself; each pair of
//! H residues that touch without being chain neighbours scores -1. The
//! lowest energy is the native fold. Each unit runs a Metropolis Monte
//! Carlo search from every seed in its range and prints the best fold it
//! found; the job's answer is the best over all units.
//!
//! Usage: `folding SEQUENCE SEED_START SEED_END STEPS`, e.g.
//! `folding HPHPPHHPHPPHPHHPPHPH 0 8 200000`. Integer arithmetic only, so
//! every host (and the native build) finds the same folds. Checkpoints after
//! every seed through the Cobble SDK, so an interrupted unit resumes.

mod model;

use cobble_sdk::{Checkpointable, Steps};
use model::Chain;
use std::process::ExitCode;

/// The best fold found so far: what a checkpoint carries between seeds.
#[derive(Debug, Clone, PartialEq)]
struct Best {
    energy: i64,
    seed: u64,
    fold: String,
}

impl Checkpointable for Best {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.energy.to_le_bytes().to_vec();
        bytes.extend(self.seed.to_le_bytes());
        bytes.extend(self.fold.as_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let energy = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let seed = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let fold = String::from_utf8(bytes.get(16..)?.to_vec()).ok()?;
        Some(Best { energy, seed, fold })
    }
}

fn main() -> ExitCode {
    let args = cobble_sdk::args();
    let parsed = match args.as_slice() {
        [sequence, start, end, steps] => Chain::parse(sequence).zip(
            start
                .parse::<u64>()
                .ok()
                .zip(end.parse::<u64>().ok())
                .zip(steps.parse::<u64>().ok()),
        ),
        _ => None,
    };
    let Some((chain, ((start, end), steps))) = parsed.filter(|(_, ((s, e), _))| s < e) else {
        eprintln!("usage: folding SEQUENCE(H/P, 3..=200) SEED_START SEED_END STEPS");
        return ExitCode::from(2);
    };
    let mut seeds = Steps::resume(end - start, 1);
    if seeds.resumed() {
        eprintln!("resumed at seed {}", start + seeds.position());
    }
    let straight = chain.straight();
    let mut best = seeds.state_or(Best {
        energy: chain.energy(&straight).unwrap_or(0),
        seed: start,
        fold: straight.to_string(),
    });
    while let Some(offset) = seeds.next_with(&best) {
        let seed = start + offset;
        let (energy, fold) = chain.search(seed, steps);
        if energy < best.energy {
            best = Best {
                energy,
                seed,
                fold: fold.to_string(),
            };
        }
    }
    println!(
        "best energy {} seed {} fold {}",
        best.energy, best.seed, best.fold
    );
    ExitCode::SUCCESS
}
