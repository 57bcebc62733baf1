//! Fixed-seed clustered vectors for recall tests and benchmarks.
//!
//! Real embeddings are not uniform noise: documents gather around topics,
//! and within a topic they vary along a few directions. So each cluster
//! here has a random centre and its own low-dimensional subspace
//! ([`SUBSPACE`] directions); a point is its centre plus a random mix of
//! those directions plus a little isotropic noise, then normalised. The
//! same seed gives the same vectors on every machine (the generator is a
//! plain xorshift), so a benchmark can hand the data to another library.

/// Directions each cluster varies along.
pub const SUBSPACE: usize = 16;

/// xorshift64*: tiny, fast and stable across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately standard normal (Irwin–Hall of four uniforms).
    pub fn normal(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * 3f32.sqrt()
    }
}

/// `n` unit vectors of `dim` dimensions around `clusters` topics.
pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let clusters = clusters.max(1);
    let topics: Vec<(Vec<f32>, Vec<Vec<f32>>)> = (0..clusters)
        .map(|_| {
            let centre = (0..dim).map(|_| rng.normal()).collect();
            let basis = (0..SUBSPACE)
                .map(|_| (0..dim).map(|_| rng.normal()).collect())
                .collect();
            (centre, basis)
        })
        .collect();
    (0..n)
        .map(|_| {
            let (centre, basis) = &topics[rng.next_u64() as usize % clusters];
            let mut v: Vec<f32> = centre.iter().map(|c| c + 0.3 * rng.normal()).collect();
            for direction in basis {
                let a = 0.6 * rng.normal();
                v.iter_mut().zip(direction).for_each(|(x, d)| *x += a * d);
            }
            crate::hashed::normalise(&mut v);
            v
        })
        .collect()
}
