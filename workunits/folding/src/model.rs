//! The HP lattice model and its Monte Carlo search: pure integer code.

use std::cell::RefCell;
use std::fmt;

/// Absolute step directions on the square lattice.
const DIRECTIONS: [(i32, i32); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
const LETTERS: [char; 4] = ['R', 'U', 'L', 'D'];
/// Metropolis acceptance of an energy rise of `dE`, as a fraction of 2^32:
/// exp(-dE / 0.35), precomputed so no host's libm can change a decision.
const ACCEPT_RISE: [u32; 8] = [
    u32::MAX,
    246_671_221,
    14_166_974,
    813_646,
    46_729,
    2_683,
    154,
    8,
];

/// A chain of residues: true for hydrophobic.
#[derive(Debug, Clone)]
pub struct Chain {
    residues: Vec<bool>,
    /// Scratch lattice for energy evaluation, reused across the millions of
    /// moves a search makes: allocation would dominate the unit's time.
    lattice: RefCell<Lattice>,
}

/// A square of cells wide enough for any fold of the chain, centred on the
/// first residue. Each cell holds 1 + the residue index occupying it, or 0.
#[derive(Debug, Clone)]
struct Lattice {
    side: i32,
    cells: Vec<u16>,
}

impl Lattice {
    fn new(residues: usize) -> Self {
        let side = 2 * residues as i32 + 1;
        Lattice {
            side,
            cells: vec![0; (side * side) as usize],
        }
    }

    fn index(&self, (x, y): (i32, i32)) -> usize {
        let half = self.side / 2;
        ((y + half) * self.side + (x + half)) as usize
    }
}

/// A conformation: the direction of each bond, n - 1 of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold(Vec<u8>);

impl Fold {
    pub fn straight(residues: usize) -> Fold {
        Fold(vec![0; residues.saturating_sub(1)])
    }
}

impl fmt::Display for Fold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|&d| write!(f, "{}", LETTERS[d as usize]))
    }
}

/// splitmix64: tiny, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Chain {
    pub fn parse(sequence: &str) -> Option<Chain> {
        let residues: Option<Vec<bool>> = sequence
            .chars()
            .map(|c| match c {
                'H' | 'h' => Some(true),
                'P' | 'p' => Some(false),
                _ => None,
            })
            .collect();
        residues
            .filter(|r| (3..=200).contains(&r.len()))
            .map(|residues| Chain {
                lattice: RefCell::new(Lattice::new(residues.len())),
                residues,
            })
    }

    pub fn len(&self) -> usize {
        self.residues.len()
    }

    /// The fold's energy, or None if it crosses itself.
    pub fn energy(&self, fold: &Fold) -> Option<i64> {
        let mut lattice = self.lattice.borrow_mut();
        let mut at = (0, 0);
        let mut placed = 0;
        let mut crossed = false;
        for i in 0..self.residues.len() {
            if i > 0 {
                let (dx, dy) = DIRECTIONS[fold.0[i - 1] as usize];
                at = (at.0 + dx, at.1 + dy);
            }
            let cell = lattice.index(at);
            if lattice.cells[cell] != 0 {
                crossed = true;
                break;
            }
            lattice.cells[cell] = i as u16 + 1;
            placed += 1;
        }
        let mut contacts = 0;
        if !crossed {
            let mut at = (0, 0);
            for i in 0..self.residues.len() {
                if i > 0 {
                    let (dx, dy) = DIRECTIONS[fold.0[i - 1] as usize];
                    at = (at.0 + dx, at.1 + dy);
                }
                if !self.residues[i] {
                    continue;
                }
                // Count each contact once: only neighbours to the right and above.
                for (dx, dy) in [(1, 0), (0, 1)] {
                    let j = lattice.cells[lattice.index((at.0 + dx, at.1 + dy))];
                    if j != 0 && self.residues[j as usize - 1] && i.abs_diff(j as usize - 1) > 1 {
                        contacts += 1;
                    }
                }
            }
        }
        // Clear exactly the cells this fold used, for the next evaluation.
        let mut at = (0, 0);
        for i in 0..placed {
            if i > 0 {
                let (dx, dy) = DIRECTIONS[fold.0[i - 1] as usize];
                at = (at.0 + dx, at.1 + dy);
            }
            let cell = lattice.index(at);
            lattice.cells[cell] = 0;
        }
        (!crossed).then_some(-contacts)
    }

    /// Metropolis search from the straight chain: pivot moves (rotate the
    /// tail after a residue) and single-bond changes. Returns the lowest
    /// energy seen and its fold.
    pub fn search(&self, seed: u64, steps: u64) -> (i64, Fold) {
        let mut rng = Rng(seed ^ 0xC0B_B1E5);
        let mut fold = Fold::straight(self.len());
        let mut energy = self.energy(&fold).unwrap_or(0);
        let mut best = (energy, fold.clone());
        let bonds = fold.0.len() as u64;
        let mut candidate = fold.clone();
        for _ in 0..steps {
            candidate.0.copy_from_slice(&fold.0);
            let at = rng.below(bonds) as usize;
            if rng.below(2) == 0 {
                let turn = 1 + rng.below(3) as u8;
                for direction in &mut candidate.0[at..] {
                    *direction = (*direction + turn) % 4;
                }
            } else {
                candidate.0[at] = rng.below(4) as u8;
            }
            let Some(new_energy) = self.energy(&candidate) else {
                continue;
            };
            let rise = (new_energy - energy).max(0) as usize;
            let threshold = ACCEPT_RISE.get(rise).copied().unwrap_or(0);
            if (rng.next() >> 32) as u32 <= threshold {
                std::mem::swap(&mut fold, &mut candidate);
                energy = new_energy;
                if energy < best.0 {
                    best = (energy, fold.clone());
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(letters: &str) -> Fold {
        Fold(
            letters
                .chars()
                .map(|c| LETTERS.iter().position(|&l| l == c).unwrap_or(0) as u8)
                .collect(),
        )
    }

    #[test]
    fn energy_counts_non_bonded_hh_contacts() {
        let square = Chain::parse("HHHH").expect("chain");
        assert_eq!(
            square.energy(&fold("RUL")),
            Some(-1),
            "a closed square has one contact"
        );
        assert_eq!(square.energy(&fold("RRR")), Some(0));
        assert_eq!(
            square.energy(&fold("RUD")),
            None,
            "crossing itself is not a fold"
        );
        let mixed = Chain::parse("HPPH").expect("chain");
        assert_eq!(mixed.energy(&fold("RUL")), Some(-1));
        assert_eq!(Chain::parse("HPXH").map(|c| c.len()), None);
    }

    /// Known answer: the 20-residue benchmark sequence of Unger and Moult
    /// (1993) has a ground state of -9, which a modest search finds.
    #[test]
    fn finds_the_known_ground_state_of_the_20_mer() {
        let chain = Chain::parse("HPHPPHHPHPPHPHHPPHPH").expect("chain");
        let best = (0..8).map(|seed| chain.search(seed, 200_000).0).min();
        assert_eq!(best, Some(-9));
    }
}
