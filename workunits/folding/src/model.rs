//! The HP lattice model and its Monte Carlo search: pure integer code.

use std::cell::RefCell;
use std::fmt;

/// Absolute step directions on the square lattice: right, up, left, down
/// (`STEPS` in the same order).
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

/// Longest chain a unit accepts.
const MAX_RESIDUES: usize = 200;

/// A chain of residues: true for hydrophobic.
#[derive(Debug, Clone)]
pub struct Chain {
    residues: Vec<bool>,
    /// Indices of the H residues: the only ones that can make contacts.
    hydrophobic: Vec<u8>,
    /// Pairs of H residues next to each other in the chain: always lattice
    /// neighbours, never contacts, so subtracted from the neighbour count.
    bonded_hh: i64,
    /// Scratch lattice for energy evaluation, reused across the millions of
    /// moves a search makes: allocation would dominate the unit's time.
    lattice: RefCell<Lattice>,
}

/// Cells per lattice row: more than twice the longest chain, so no fold
/// can reach around and meet itself.
const ROW: u32 = 512;
/// Cell indices wrap at this mask (ROW × ROW cells), which bounds every
/// index by the array's length: the hot loops need no bounds checks.
const CELL_MASK: u32 = ROW * ROW - 1;
/// Index offset of one step in each direction of `LETTERS`, modulo the
/// lattice size: right, up, left, down.
const STEPS: [u32; 4] = [1, ROW, CELL_MASK, CELL_MASK + 1 - ROW];

/// The square lattice, as one array of `ROW × ROW` cells whose index
/// wraps around. A fold spans at most `MAX_RESIDUES` cells either way and
/// `ROW` is more than twice that, so two residues share an index only if
/// they share a cell, and differ by 1 or `ROW` only if they are neighbours.
/// A cell belongs to the current evaluation only if it carries the current
/// stamp, so nothing has to be cleared between evaluations.
#[derive(Debug, Clone)]
struct Lattice {
    /// `stamp << 1 | hydrophobic` of the last evaluation that placed a
    /// residue here.
    cells: Box<[u32; (CELL_MASK + 1) as usize]>,
    stamp: u32,
    /// Cell of each residue in the current evaluation.
    placed: [u32; 256],
}

impl Lattice {
    fn new() -> Self {
        let cells = vec![0; (CELL_MASK + 1) as usize].into_boxed_slice();
        Lattice {
            cells: cells
                .try_into()
                .unwrap_or_else(|_| unreachable!("sized above")),
            stamp: 0,
            placed: [0; 256],
        }
    }

    /// A stamp no cell carries yet.
    fn next_stamp(&mut self) -> u32 {
        if self.stamp == u32::MAX >> 1 {
            self.cells.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
        self.stamp
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

    /// Uniform in `0..n` for `n <= 2^32` (Lemire's multiply-shift): a
    /// multiplication instead of a 64-bit division, which would cost more
    /// than the rest of a move's bookkeeping.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

/// One Monte Carlo move, kept so that a rejected move can be undone in
/// place instead of copying the fold before every try.
enum Move {
    /// Bonds `from..` turned by `turn` quarter turns.
    Pivot { from: usize, turn: u8 },
    /// Bond `at` had direction `was`.
    Bond { at: usize, was: u8 },
}

impl Move {
    fn undo(self, fold: &mut Fold) {
        match self {
            Move::Pivot { from, turn } => rotate(&mut fold.0[from..], 4 - turn),
            Move::Bond { at, was } => fold.0[at] = was,
        }
    }
}

fn rotate(directions: &mut [u8], turn: u8) {
    for direction in directions {
        *direction = (*direction + turn) & 3;
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
            .filter(|r| (3..=MAX_RESIDUES).contains(&r.len()))
            .map(|residues| Chain {
                lattice: RefCell::new(Lattice::new()),
                bonded_hh: residues.windows(2).filter(|w| w[0] && w[1]).count() as i64,
                hydrophobic: (0..residues.len() as u8)
                    .filter(|&i| residues[i as usize])
                    .collect(),
                residues,
            })
    }

    pub fn len(&self) -> usize {
        self.residues.len()
    }

    /// The fold's energy, or None if it crosses itself.
    ///
    /// The hottest code of the unit, written as plain indexed loops over
    /// slices of known length and masked indices: few live values and no
    /// bounds checks in the loops, which matters more to the wasm compiler
    /// (and its fuel counting, per basic block) than to LLVM.
    pub fn energy(&self, fold: &Fold) -> Option<i64> {
        let mut lattice = self.lattice.borrow_mut();
        let lattice = &mut *lattice;
        let stamp = lattice.next_stamp();
        let n = self.residues.len();
        let (residues, directions) = (&self.residues[..n], &fold.0[..n - 1]);
        let (placed, cells) = (&mut lattice.placed[..n], &mut lattice.cells);
        // Place the residues, stopping at the first that lands on an
        // occupied cell. Each cell gets `stamp << 1 | hydrophobic`.
        let mut cell = 0;
        let mut place = |i: usize| {
            if i > 0 {
                cell = (cell + STEPS[directions[i - 1] as usize & 3]) & CELL_MASK;
            }
            let occupant = &mut cells[cell as usize];
            let free = *occupant >> 1 != stamp;
            *occupant = stamp << 1 | u32::from(residues[i]);
            placed[i] = cell;
            free
        };
        // Four residues a loop trip: in wasm each trip pays a fuel check.
        let mut i = 0;
        while i + 4 <= n {
            if !(place(i) && place(i + 1) && place(i + 2) && place(i + 3)) {
                return None;
            }
            i += 4;
        }
        while i < n {
            if !place(i) {
                return None;
            }
            i += 1;
        }
        // Count each H-H neighbour pair once: look right and up from every
        // H residue. Chain neighbours are among them; they are no contacts.
        let h = stamp << 1 | 1;
        let mut neighbours = 0;
        for &i in &self.hydrophobic {
            let cell = lattice.placed[i as usize];
            let right = cells[((cell + STEPS[0]) & CELL_MASK) as usize];
            let up = cells[((cell + STEPS[1]) & CELL_MASK) as usize];
            neighbours += i64::from(right == h) + i64::from(up == h);
        }
        Some(self.bonded_hh - neighbours)
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
        for _ in 0..steps {
            let at = rng.below(bonds) as usize;
            let change = if rng.below(2) == 0 {
                let turn = 1 + rng.below(3) as u8;
                rotate(&mut fold.0[at..], turn);
                Move::Pivot { from: at, turn }
            } else {
                let was = fold.0[at];
                fold.0[at] = rng.below(4) as u8;
                Move::Bond { at, was }
            };
            let Some(new_energy) = self.energy(&fold) else {
                change.undo(&mut fold);
                continue;
            };
            let rise = (new_energy - energy).max(0) as usize;
            let threshold = ACCEPT_RISE.get(rise).copied().unwrap_or(0);
            if (rng.next() >> 32) as u32 <= threshold {
                energy = new_energy;
                if energy < best.0 {
                    best = (energy, fold.clone());
                }
            } else {
                change.undo(&mut fold);
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
