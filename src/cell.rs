//! Cells for memory that other processes write.
//!
//! Every field of the shared registry is one of these: a Rust reference to such a
//! field is a reference to an atomic, which is sound however other processes write
//! the bytes behind it. Loads and stores are `Relaxed`; ordering between fields comes
//! from the registry lock (acquire/release on the mutex word) or from the registry's
//! publication counter (acquire/release, see `registry::Registry::read`).

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

macro_rules! cell {
    ($name:ident, $atomic:ty, $t:ty) => {
        /// A shared field (see the module comment).
        #[repr(transparent)]
        #[derive(Default)]
        pub struct $name($atomic);

        impl $name {
            /// Zero: what a never-written part of a shared file holds. An
            /// initialiser: each use is a fresh cell, as intended.
            #[allow(clippy::declare_interior_mutable_const)]
            pub const ZERO: Self = Self(<$atomic>::new(0));
            #[inline]
            pub fn get(&self) -> $t {
                self.0.load(Relaxed)
            }
            #[inline]
            pub fn set(&self, v: $t) {
                self.0.store(v, Relaxed)
            }
            /// The atomic itself, for the few fields that need stronger orderings.
            #[inline]
            pub fn atomic(&self) -> &$atomic {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                self.get().fmt(f)
            }
        }
    };
}

cell!(U32, AtomicU32, u32);
cell!(I32, AtomicI32, i32);
cell!(U64, AtomicU64, u64);
cell!(I64, AtomicI64, i64);

impl U32 {
    pub fn add(&self, v: u32) {
        self.set(self.get().wrapping_add(v));
    }
    pub fn sub(&self, v: u32) {
        self.set(self.get().wrapping_sub(v));
    }
}

impl U64 {
    pub fn add(&self, v: u64) {
        self.set(self.get().wrapping_add(v));
    }
    pub fn sub(&self, v: u64) {
        self.set(self.get().wrapping_sub(v));
    }
}
