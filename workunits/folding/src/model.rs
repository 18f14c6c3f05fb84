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
    /// Followed by the cell of each residue in the current evaluation, so
    /// that one base address serves both (one register fewer in wasm).
    cells: Box<[u32; CELLS + PLACED]>,
    stamp: u32,
}

const CELLS: usize = (CELL_MASK + 1) as usize;
const PLACED: usize = 256;

impl Lattice {
    fn new() -> Self {
        let cells = vec![0; CELLS + PLACED].into_boxed_slice();
        Lattice {
            cells: cells
                .try_into()
                .unwrap_or_else(|_| unreachable!("sized above")),
            stamp: 0,
        }
    }

    /// A stamp no cell carries yet.
    fn next_stamp(&mut self) -> u32 {
        if self.stamp == u32::MAX >> 1 {
            self.cells[..CELLS].fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
        self.stamp
    }
}

/// A conformation, as the turn of each bond relative to the one before
/// (the first bond's turn is its absolute direction): n - 1 values in
/// `0..4`, counted in quarter turns anticlockwise.
///
/// Relative turns make both Monte Carlo moves O(1): rotating the tail after
/// a residue changes one turn, and turning one bond changes two, where
/// absolute directions would have to be rewritten for the whole tail.
///
/// Bit 2 of each bond's byte is `HYDROPHOBIC`, set if the residue the bond
/// leads to is H: energy evaluation then reads one array, not two, which
/// keeps one register free in wasm's placement loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold(Vec<u8>);

/// Bit of a bond's byte in a `Fold`: the residue it leads to is H.
const HYDROPHOBIC: u8 = 4;

impl Fold {
    /// The turn of each bond: 0..4 quarter turns.
    fn turns(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().map(|&bond| bond & 3)
    }

    /// Absolute direction of each bond, indices into `LETTERS`.
    fn directions(&self) -> impl Iterator<Item = u8> + '_ {
        self.turns().scan(0u8, |direction, turn| {
            *direction = (*direction + turn) & 3;
            Some(*direction)
        })
    }
}

impl fmt::Display for Fold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.directions()
            .try_for_each(|d| write!(f, "{}", LETTERS[d as usize]))
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

    /// A random move on a fold of `bonds` bonds, from one 64-bit draw:
    /// the high half picks the bond (Lemire's multiply-shift, where a
    /// 64-bit `%` would cost more than the rest of the move's bookkeeping),
    /// bit 0 the kind, the bits above it the turn.
    fn next_move(&mut self, bonds: u64) -> Move {
        let bits = self.next();
        let at = (((bits >> 32) * bonds) >> 32) as usize;
        if bits & 1 == 0 {
            // One to three quarter turns.
            Move::pivot(at, 1 + ((((bits & 0xFFFF_FFFF) >> 1) * 3) >> 31) as u8)
        } else {
            // A uniformly random new direction: a turn of 0..4.
            Move::bond(at, (bits >> 1) as u8 & 3)
        }
    }
}

/// One Monte Carlo move: the bond whose turn changed, by how much, and
/// whether the next bond's turn changed by the opposite amount. Kept so
/// that a rejected move is undone in place.
#[derive(Clone, Copy)]
struct Move {
    at: usize,
    turn: u8,
    /// A single-bond change: the tail keeps its directions, so the next
    /// bond turns back by the same amount.
    bond_only: bool,
}

impl Move {
    /// Rotates the tail after bond `at`, that bond included, by `turn`.
    fn pivot(at: usize, turn: u8) -> Move {
        Move {
            at,
            turn,
            bond_only: false,
        }
    }

    /// Turns bond `at` alone by `turn`: the tail after it is translated.
    fn bond(at: usize, turn: u8) -> Move {
        Move {
            at,
            turn,
            bond_only: true,
        }
    }

    fn apply(self, fold: &mut Fold) {
        self.add(fold, self.turn);
    }

    fn undo(self, fold: &mut Fold) {
        self.add(fold, 4 - self.turn);
    }

    fn add(self, fold: &mut Fold, turn: u8) {
        let bonds = &mut fold.0;
        let turned = |bond: u8, by: u8| (bond & HYDROPHOBIC) | ((bond + by) & 3);
        bonds[self.at] = turned(bonds[self.at], turn);
        if self.bond_only
            && let Some(next) = bonds.get_mut(self.at + 1)
        {
            *next = turned(*next, 4 - turn);
        }
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

    /// The chain laid out in a straight line.
    pub fn straight(&self) -> Fold {
        Fold(
            self.residues[1..]
                .iter()
                .map(|&h| if h { HYDROPHOBIC } else { 0 })
                .collect(),
        )
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
        let bonds = &fold.0[..n - 1];
        // Deref the box once: through `&mut Box` LLVM reloads its pointer
        // after every store.
        let cells = &mut *lattice.cells;
        // Place the residues, stopping at the first that lands on an
        // occupied cell. Each cell gets `stamp << 1 | hydrophobic`.
        let mark = stamp << 1;
        let (mut cell, mut direction) = (0, 0);
        cells[0] = mark | u32::from(self.residues[0]);
        cells[CELLS] = 0;
        // A macro, not a closure: LLVM does not always inline a closure
        // called four times when it targets wasm, and a call per residue
        // costs more than the residue.
        macro_rules! place {
            ($i:expr) => {{
                let i = $i;
                let bond = bonds[i - 1];
                direction = (direction + bond) & 3;
                cell = (cell + STEPS[direction as usize]) & CELL_MASK;
                let occupant = &mut cells[cell as usize];
                let free = (*occupant ^ mark) >> 1 != 0;
                *occupant = mark | u32::from(bond >> 2);
                cells[CELLS + (i & (PLACED - 1))] = cell;
                free
            }};
        }
        // Four residues a loop trip: in wasm each trip pays a fuel check.
        let mut i = 1;
        while i + 4 <= n {
            if !(place!(i) && place!(i + 1) && place!(i + 2) && place!(i + 3)) {
                return None;
            }
            i += 4;
        }
        while i < n {
            if !place!(i) {
                return None;
            }
            i += 1;
        }
        // Count each H-H neighbour pair once: look right and up from every
        // H residue. Chain neighbours are among them; they are no contacts.
        let h = mark | 1;
        let mut neighbours = 0;
        for &i in &self.hydrophobic {
            let cell = cells[CELLS + i as usize];
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
        let mut fold = self.straight();
        let mut energy = self.energy(&fold).unwrap_or(0);
        let mut best = (energy, fold.clone());
        let bonds = fold.0.len() as u64;
        for _ in 0..steps {
            let change = rng.next_move(bonds);
            change.apply(&mut fold);
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

    /// A fold of `chain` from its absolute directions, as `Display` prints it.
    fn fold(chain: &Chain, letters: &str) -> Fold {
        let mut previous = 0;
        let mut fold = chain.straight();
        for (bond, c) in fold.0.iter_mut().zip(letters.chars()) {
            let direction = LETTERS.iter().position(|&l| l == c).unwrap_or(0) as u8;
            *bond |= (direction + 4 - previous) & 3;
            previous = direction;
        }
        fold
    }

    #[test]
    fn folds_print_absolute_directions() {
        let chain = Chain::parse("HPHHPPH").expect("chain");
        assert_eq!(fold(&chain, "RULLDR").to_string(), "RULLDR");
        assert_eq!(chain.straight().to_string(), "RRRRRR");
    }

    #[test]
    fn moves_rotate_or_translate_the_tail_and_undo_exactly() {
        let chain = Chain::parse("HPHPH").expect("chain");
        let start = fold(&chain, "RRUL");
        let mut moved = start.clone();
        let pivot = Move::pivot(1, 1);
        pivot.apply(&mut moved);
        assert_eq!(
            moved.to_string(),
            "RULD",
            "tail after bond 1 turned a quarter"
        );
        pivot.undo(&mut moved);
        assert_eq!(moved, start);
        let bond = Move::bond(1, 3);
        bond.apply(&mut moved);
        assert_eq!(moved.to_string(), "RDUL", "bond 1 turned, the rest kept");
        bond.undo(&mut moved);
        assert_eq!(moved, start);
        let last = Move::bond(3, 2);
        last.apply(&mut moved);
        assert_eq!(moved.to_string(), "RRUR");
        assert_eq!(
            chain.energy(&moved),
            chain.energy(&fold(&chain, "RRUR")),
            "moves keep each residue's H flag"
        );
    }

    #[test]
    fn energy_counts_non_bonded_hh_contacts() {
        let square = Chain::parse("HHHH").expect("chain");
        assert_eq!(
            square.energy(&fold(&square, "RUL")),
            Some(-1),
            "a closed square has one contact"
        );
        assert_eq!(square.energy(&fold(&square, "RRR")), Some(0));
        assert_eq!(
            square.energy(&fold(&square, "RUD")),
            None,
            "crossing itself is not a fold"
        );
        let mixed = Chain::parse("HPPH").expect("chain");
        assert_eq!(mixed.energy(&fold(&mixed, "RUL")), Some(-1));
        assert!(Chain::parse("HPXH").is_none(), "only H and P are residues");
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
