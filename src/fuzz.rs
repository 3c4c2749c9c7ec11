//! Deterministic garbage for the "never panics on any input" tests of every parser.

/// Xorshift-driven random strings over an alphabet: the same sequence every run,
/// so a failure reproduces.
pub struct Garbage {
    seed: u64,
}

impl Garbage {
    pub fn new(seed: u64) -> Garbage {
        Garbage { seed }
    }

    /// The next number, for fuzzing numeric inputs alongside the strings.
    pub fn number(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// The next string: up to `max_len - 1` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[char], max_len: usize) -> String {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let len = (self.seed % max_len as u64) as usize;
        let mut x = self.seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                alphabet[(x >> 33) as usize % alphabet.len()]
            })
            .collect()
    }
}
