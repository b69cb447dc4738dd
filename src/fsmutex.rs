//! A small futex mutex that survives `fork`: the child of a fork taken while other
//! threads waited on it can still unlock and use it (parking_lot's mutex keeps
//! waiter state in process-global tables that a fork child inherits half-held).
//!
//! States: 0 unlocked, 1 locked, 2 locked with waiters (Drepper, "Futexes Are
//! Tricky").

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

thread_local! {
    /// How many shim locks (these mutexes and the registry lock) this thread holds.
    /// A signal handler that makes a SysV call while its thread holds one would
    /// wait for itself: such a call fails at once instead (see preload's `guarded`).
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Counts a shim lock taken (`true`) or released by this thread.
pub fn note_held(taken: bool) {
    HELD.with(|h| h.set(if taken { h.get() + 1 } else { h.get().saturating_sub(1) }));
}

/// Whether this thread holds any shim lock now.
pub fn holding_any() -> bool {
    HELD.with(|h| h.get() > 0)
}

pub struct FsMutex<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `state`, as for any mutex.
unsafe impl<T: Send> Sync for FsMutex<T> {}
// SAFETY: as above; the value moves with the mutex.
unsafe impl<T: Send> Send for FsMutex<T> {}

pub struct FsGuard<'a, T> {
    m: &'a FsMutex<T>,
}

fn futex(addr: &AtomicU32, op: i32, val: u32) {
    crate::sys::futex_private(addr, op, val);
}

impl<T> FsMutex<T> {
    pub const fn new(v: T) -> Self {
        FsMutex { state: AtomicU32::new(0), data: UnsafeCell::new(v) }
    }

    pub fn lock(&self) -> FsGuard<'_, T> {
        // Counted before it is taken: a signal landing in between sees it held.
        note_held(true);
        if self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.state.swap(2, Ordering::Acquire) != 0 {
                futex(&self.state, libc::FUTEX_WAIT, 2);
            }
        }
        FsGuard { m: self }
    }

    pub fn try_lock(&self) -> Option<FsGuard<'_, T>> {
        note_held(true);
        let g = self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| FsGuard { m: self });
        if g.is_none() {
            note_held(false);
        }
        g
    }
}

impl<T> Drop for FsGuard<'_, T> {
    fn drop(&mut self) {
        if self.m.state.swap(0, Ordering::Release) == 2 {
            futex(&self.m.state, libc::FUTEX_WAKE, 1);
        }
        // Uncounted after it is released (see `lock`).
        note_held(false);
    }
}

impl<T> Deref for FsGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock.
        unsafe { &*self.m.data.get() }
    }
}

impl<T> DerefMut for FsGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves we hold the lock, exclusively.
        unsafe { &mut *self.m.data.get() }
    }
}
