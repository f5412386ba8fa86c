//! Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
//! easy as 1, 2, 3", SC 2011), implemented identically here and in the CUDA kernels.
//!
//! A [`Stream`] is keyed by the run's seed and addresses its blocks by a counter
//! `[block, index, purpose | index_high << 8, sub]`, so the numbers a sample gets depend only on
//! (seed, sample index, purpose, sub) and never on batch size, backend or shard.

/// Philox4x32 round multipliers and key increments (the Random123 constants).
pub const PHILOX_M0: u32 = 0xD251_1F53;
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
pub const PHILOX_W0: u32 = 0x9E37_79B9;
pub const PHILOX_W1: u32 = 0xBB67_AE85;

/// One Philox4x32 block with 10 rounds: four 32-bit outputs of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// What a stream of random numbers is for; each purpose has its own counter space.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The starting noise `z` of a sample (`sub` = 0).
    InitialNoise = 1,
    /// The noise a stochastic sampler adds at a step (`sub` = step index).
    StepNoise = 2,
    /// A posterior weight draw (`index` = draw index).
    WeightDraw = 3,
    /// The class label of a conditional sample.
    Class = 4,
    /// The timestep of a fit-set image.
    FitTimestep = 5,
    /// The noise of a fit-set image.
    FitNoise = 6,
    /// The horizontal flip of a fit-set image.
    FitFlip = 7,
}

/// 2^-24: the spacing of the 24-bit uniforms.
const INV_2_24: f32 = 1.0 / 16_777_216.0;

/// A sequence of random numbers: Philox blocks at counters `[0, w1, w2, w3]`, `[1, w1, w2, w3]`,
/// ... under the seed's key, consumed one 32-bit word at a time.
#[derive(Clone, Debug)]
pub struct Stream {
    key: [u32; 2],
    /// Counter of the next block to generate.
    counter: [u32; 4],
    buffer: [u32; 4],
    /// Next unused word of `buffer`; 4 when it is used up.
    used: usize,
}

impl Stream {
    /// The stream for (seed, index, purpose, sub). Key = `[seed as u32, (seed >> 32) as u32]`;
    /// counter = `[block, index as u32, purpose as u32 | (index >> 32) << 8, sub]`: bits 32..56 of
    /// `index` share the third word with the purpose code, so distinct indices below 2^56 never
    /// collide with each other or with any `sub`. Panics if `index >= 2^56`.
    pub fn new(seed: u64, index: u64, purpose: Purpose, sub: u32) -> Self {
        assert!(
            index < 1 << 56,
            "random stream index {index} is 2^56 or more"
        );
        Stream {
            key: [seed as u32, (seed >> 32) as u32],
            counter: [
                0,
                index as u32,
                purpose as u32 | (((index >> 32) as u32) << 8),
                sub,
            ],
            buffer: [0; 4],
            used: 4,
        }
    }

    /// The Philox key of this stream.
    pub fn key(&self) -> [u32; 2] {
        self.key
    }

    /// The counter of the next block a fresh draw would start ([`Self::fill_normal`] always
    /// starts there; words left in a partly used block are skipped).
    pub fn next_block_counter(&self) -> [u32; 4] {
        self.counter
    }

    fn refill(&mut self) {
        self.buffer = philox4x32_10(self.counter, self.key);
        self.counter[0] = self.counter[0]
            .checked_add(1)
            .expect("random stream exhausted (2^32 blocks)");
        self.used = 0;
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.refill();
        }
        let w = self.buffer[self.used];
        self.used += 1;
        w
    }

    /// A uniform number in (0, 1] with 24 random bits: `((w >> 8) + 1) * 2^-24`, exact in f32.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u32() >> 8) + 1) as f32 * INV_2_24
    }

    /// Fills `out` with standard normal numbers (Box-Muller).
    ///
    /// The recipe, for a CUDA port: starting at the next unused block `b0` (words left in a
    /// partly used block are skipped), element `j` comes from block `b0 + j / 4`; its words
    /// `(w0, w1, w2, w3)` give two pairs `(w0, w1)` and `(w2, w3)`; pair `(a, b)` gives, in f32,
    /// `u1 = ((a >> 8) + 1) * 2^-24` in (0, 1], `u2 = (b >> 8) * 2^-24` in [0, 1),
    /// `r = sqrtf(-2.0f * logf(u1))`, `theta = 6.2831855f * u2` and the two normals
    /// `r * cosf(theta)`, `r * sinf(theta)` (elements `4q`, `4q + 1` from the first pair, `4q + 2`,
    /// `4q + 3` from the second). Every block is consumed whole. With IEEE `sqrtf` and CUDA's
    /// `logf`/`sinf`/`cosf` (1-2 ulp, no fast math) a port agrees to a few f32 ulps.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        self.used = 4;
        for chunk in out.chunks_mut(4) {
            self.refill();
            self.used = 4;
            let w = self.buffer;
            let (z0, z1) = box_muller(w[0], w[1]);
            let (z2, z3) = box_muller(w[2], w[3]);
            for (o, z) in chunk.iter_mut().zip([z0, z1, z2, z3]) {
                *o = z;
            }
        }
    }

    /// An unbiased integer in `[0, n)` (Lemire's multiply-and-reject). Panics if `n == 0`.
    pub fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0, "Stream::below needs n > 0");
        let mut m = u64::from(self.next_u32()) * u64::from(n);
        if (m as u32) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u32) < threshold {
                m = u64::from(self.next_u32()) * u64::from(n);
            }
        }
        (m >> 32) as u32
    }
}

/// Two standard normals from two random words (see [`Stream::fill_normal`]).
#[inline]
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let u1 = ((a >> 8) + 1) as f32 * INV_2_24;
    let u2 = (b >> 8) as f32 * INV_2_24;
    let r = (-2.0f32 * u1.ln()).sqrt();
    let theta = std::f32::consts::TAU * u2;
    (r * theta.cos(), r * theta.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn stream_words_are_the_philox_blocks_of_its_counter() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        let mut s = Stream::new(seed, (5 << 32) | 9, Purpose::WeightDraw, 11);
        let key = [0x89ab_cdef, 0x0123_4567];
        for block in 0..3u32 {
            let want = philox4x32_10([block, 9, 3 | (5 << 8), 11], key);
            let got = [s.next_u32(), s.next_u32(), s.next_u32(), s.next_u32()];
            assert_eq!(got, want);
        }
    }

    #[test]
    fn uniform_lies_in_half_open_unit_interval() {
        let mut s = Stream::new(1, 0, Purpose::Class, 0);
        for _ in 0..100_000 {
            let u = s.uniform();
            assert!(u > 0.0 && u <= 1.0);
        }
    }

    #[test]
    fn below_covers_range_evenly() {
        let mut s = Stream::new(2, 0, Purpose::FitTimestep, 0);
        let n = 7u32;
        let draws = 70_000;
        let mut counts = [0u32; 7];
        for _ in 0..draws {
            counts[s.below(n) as usize] += 1;
        }
        // Binomial std of a count is ~92; allow 5 sigma.
        for c in counts {
            assert!((c as i64 - 10_000).abs() < 460, "{counts:?}");
        }
        assert_eq!(s.below(1), 0);
    }

    #[test]
    fn fill_normal_starts_at_a_fresh_block() {
        let mut a = Stream::new(3, 1, Purpose::InitialNoise, 0);
        let _ = a.next_u32();
        let mut got = [0.0f32; 6];
        a.fill_normal(&mut got);
        // Block 0 was partly used, so the normals come from blocks 1 and 2.
        let mut want = [0.0f32; 8];
        for b in 0..2u32 {
            let w = philox4x32_10([b + 1, 1, 1, 0], a.key());
            let (z0, z1) = box_muller(w[0], w[1]);
            let (z2, z3) = box_muller(w[2], w[3]);
            want[4 * b as usize..4 * b as usize + 4].copy_from_slice(&[z0, z1, z2, z3]);
        }
        assert_eq!(got[..], want[..6]);
        assert_eq!(a.next_block_counter()[0], 3);
    }
}
