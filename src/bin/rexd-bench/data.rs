//! Deterministic pseudo-random data. Every workload draws its blobs from `--seed`, so two
//! runs send the same shapes; a per-run salt in front of the bytes makes them new to the
//! server, so nothing is answered from an earlier run.

use bytes::{Bytes, BytesMut};

/// Length of the salt that starts every generated blob.
pub const SALT_LEN: usize = 16;

/// Bytes generated per step when filling large buffers.
const FILL_STEP: usize = 1024 * 1024;

/// A fresh salt for this run (random, unlike the data after it).
pub type Salt = [u8; SALT_LEN];

pub fn fresh_salt() -> Salt {
    *uuid::Uuid::new_v4().as_bytes()
}

/// The salt as hex, for command lines and environment variables.
pub fn salt_hex(salt: &Salt) -> String {
    hex::encode(salt)
}

/// xorshift64*: fast and seedable; good for incompressible test data, not for secrets.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one named stream of `seed`, so each workload's data is independent of
    /// which other workloads ran before it.
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in stream.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        Rng(x | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// `len` pseudo-random bytes, generated step by step into one buffer (never a second copy).
    pub fn bytes(&mut self, len: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            let start = buf.len();
            buf.resize(start + FILL_STEP.min(len - start), 0);
            self.fill(&mut buf[start..]);
        }
        buf.freeze()
    }

    /// A blob of `len` bytes: the salt (cut short if `len` is smaller), then random bytes.
    pub fn salted(&mut self, salt: &Salt, len: usize) -> Bytes {
        let mut buf = vec![0u8; len];
        let n = SALT_LEN.min(len);
        buf[..n].copy_from_slice(&salt[..n]);
        self.fill(&mut buf[n..]);
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let a = Rng::new(7, "x").bytes(3 * FILL_STEP + 5);
        let b = Rng::new(7, "x").bytes(3 * FILL_STEP + 5);
        assert_eq!(a, b);
        assert_ne!(a, Rng::new(8, "x").bytes(3 * FILL_STEP + 5));
        assert_ne!(a, Rng::new(7, "y").bytes(3 * FILL_STEP + 5));
    }

    #[test]
    fn salted_starts_with_the_salt() {
        let salt = fresh_salt();
        let blob = Rng::new(1, "s").salted(&salt, 100);
        assert_eq!(blob.len(), 100);
        assert_eq!(&blob[..SALT_LEN], &salt);
        assert_eq!(&Rng::new(1, "s").salted(&salt, 4)[..], &salt[..4]);
    }

    #[test]
    fn range_is_inclusive() {
        let mut rng = Rng::new(3, "r");
        let values: Vec<usize> = (0..1000).map(|_| rng.range(2, 4)).collect();
        assert!(values.iter().all(|v| (2..=4).contains(v)));
        assert!(values.contains(&2) && values.contains(&4));
    }
}
