//! Deterministic pseudo-random numbers and bytes for test data (xorshift64):
//! the same seed gives the same data, so a failure reproduces from the seed a
//! test prints. No crate needed.

#![allow(dead_code)] // each test binary uses a different subset

pub struct Rng(pub u64);

impl Rng {
    /// A generator from `seed` (made odd: xorshift never leaves zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A seed from the clock, for tests that vary their data run to run
    /// (print it, so a failure can be replayed with [`Rng::new`]).
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos() as u64
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
