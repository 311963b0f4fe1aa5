//! The random source the shells give the core.

use std::cell::RefCell;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// ChaCha12 seeded once per thread from the OS, so a reply's random prefix and nonce
/// cost no system call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRng;

thread_local! {
    static RNG: RefCell<ChaCha12Rng> = RefCell::new(ChaCha12Rng::from_entropy());
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|r| r.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|r| r.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|r| r.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        RNG.with(|r| r.borrow_mut().try_fill_bytes(dest))
    }
}
