//! Memory shared with other processes: a file mapping every participant maps,
//! typed views into it, and the process-shared robust mutex that lives there.
//!
//! The rule that keeps this sound: Rust code holds references only to types whose
//! every byte sits inside an `UnsafeCell` (atomics, the cells of `cell.rs`,
//! [`RawMutex`]), because another process may write any byte of the mapping at
//! any time. The [`Shared`] trait marks those types; [`shared_struct!`] declares a
//! `#[repr(C)]` struct of them and proves, field by field, that it is one too.
//! Every `unsafe` block behind the registry is here or in `sys`, except the
//! mutexes' initialisation in `registry::build`.

use crate::cell::{I32, I64, U32, U64};
use crate::sys::{self, SysResult};
use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// A type that may be viewed in memory other processes write.
///
/// # Safety
/// Every byte of the type is inside an `UnsafeCell`, the type has no padding a
/// reference could assume, and any bit pattern is a valid value (all-zero
/// included: that is `ZERO`).
pub unsafe trait Shared: Sized + Sync {
    /// The all-zero value: what a never-written part of the file holds (an
    /// initialiser: each use is a fresh value).
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: Self;

    /// Copies `src` into `self` field by field, each field with one atomic load
    /// and one atomic store of its own size (a concurrent reader sees every field
    /// either old or new, never torn).
    fn copy_from(&self, src: &Self);
}

macro_rules! shared_atomic {
    ($($t:ty),*) => {$(
        // SAFETY: an atomic integer is an UnsafeCell of a plain integer: every
        // bit pattern is valid and concurrent writes are its purpose.
        unsafe impl Shared for $t {
            const ZERO: Self = <$t>::new(0);
            fn copy_from(&self, src: &Self) {
                self.store(src.load(Ordering::Relaxed), Ordering::Relaxed)
            }
        }
    )*};
}
shared_atomic!(AtomicU32, AtomicI32, AtomicU64, AtomicI64);

macro_rules! shared_cell {
    ($($t:ident),*) => {$(
        // SAFETY: the cells are `repr(transparent)` atomics (cell.rs).
        unsafe impl Shared for $t {
            const ZERO: Self = $t::ZERO;
            fn copy_from(&self, src: &Self) {
                self.set(src.get())
            }
        }
    )*};
}
shared_cell!(U32, I32, U64, I64);

// SAFETY: an array of Shared elements has no padding between them (size is a
// multiple of alignment) and is valid for any bytes if each element is.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {
    const ZERO: Self = [const { T::ZERO }; N];
    fn copy_from(&self, src: &Self) {
        for (d, s) in self.iter().zip(src) {
            d.copy_from(s);
        }
    }
}

/// Declares a `#[repr(C)]` struct whose fields are all [`Shared`], and makes it
/// `Shared` itself: the struct must also have no padding, which a compile-time
/// check on its size enforces.
#[macro_export]
macro_rules! shared_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $vis:vis $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        pub struct $name { $($(#[$fm])* $vis $f: $t),* }

        // No padding: the fields' sizes add up to the struct's.
        const _: () = assert!(std::mem::size_of::<$name>() == 0 $(+ std::mem::size_of::<$t>())*);

        impl $name {
            /// The all-zero value (an initialiser: each use is a fresh value).
            #[allow(clippy::declare_interior_mutable_const)]
            pub const ZERO: Self = Self { $($f: <$t as $crate::shared::Shared>::ZERO),* };
        }

        // SAFETY: every field is Shared (the ZERO above names each field's
        // Shared impl, so it fails to compile otherwise) and there is no padding
        // (asserted above).
        unsafe impl $crate::shared::Shared for $name {
            const ZERO: Self = $name::ZERO;
            fn copy_from(&self, src: &Self) {
                $(<$t as $crate::shared::Shared>::copy_from(&self.$f, &src.$f);)*
            }
        }
    };
}
pub use shared_struct;

/// A glibc process-shared robust mutex inside shared memory, reached only through
/// pthread calls (never through a reference to its fields).
#[repr(transparent)]
pub struct RawMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: a process-shared mutex is made to be used by many threads and
// processes at once; its bytes are only touched by glibc's mutex code (and read
// atomically by `futex_word`).
unsafe impl Sync for RawMutex {}

// SAFETY: inside an UnsafeCell; all-zero is glibc's PTHREAD_MUTEX_INITIALIZER, and
// the mutex functions act on whatever bytes they find without undefined behaviour
// in this process (a garbled word makes them fail or wait, as any mutex
// contention would).
unsafe impl Shared for RawMutex {
    // SAFETY: a pthread_mutex_t is plain C data; all-zero is valid.
    const ZERO: Self = RawMutex(UnsafeCell::new(unsafe { std::mem::zeroed() }));
    /// A mutex is never copied: its bytes belong to glibc (and to whoever holds
    /// it), so this leaves them alone.
    fn copy_from(&self, _src: &Self) {}
}

impl RawMutex {
    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.0.get()
    }

    /// Makes the bytes a robust, process-shared mutex.
    ///
    /// # Safety
    /// No other thread or process may use the mutex yet.
    pub unsafe fn init(&self) {
        // SAFETY: as the caller guarantees; the pointer is to our own cell.
        unsafe { sys::init_robust_mutex(self.ptr()) }
    }

    /// Locks, waiting as long as it takes; true with the guard when the previous
    /// owner died holding it (the caller then repairs what it protects and calls
    /// [`Locked::mark_consistent`]).
    pub fn lock(&self) -> (Locked<'_>, bool) {
        // SAFETY: the mutex lives inside a mapping that outlives &self; glibc's
        // lock acts on whatever bytes it finds (see the Shared impl).
        let r = unsafe { sys::robust_mutex_lock(self.ptr()) };
        (Locked { m: self, _thread: PhantomData }, r == libc::EOWNERDEAD)
    }

    /// Locks, waiting at most `wait`: None if the holder kept it that long.
    pub fn lock_for(&self, wait: std::time::Duration) -> Option<(Locked<'_>, bool)> {
        // SAFETY: as in `lock`.
        let r = unsafe { sys::robust_mutex_timedlock(self.ptr(), wait) };
        // (ETIMEDOUT, or ENOTRECOVERABLE: a repairer that failed to finish; no
        // lock is held either way.)
        matches!(r, 0 | libc::EOWNERDEAD).then(|| (Locked { m: self, _thread: PhantomData }, r == libc::EOWNERDEAD))
    }

    /// Locks only if free.
    pub fn try_lock(&self) -> Option<(Locked<'_>, bool)> {
        // SAFETY: as in `lock`.
        let r = unsafe { sys::robust_mutex_trylock(self.ptr()) };
        // (`then`, not `then_some`: a guard built for EBUSY would unlock on drop.)
        (r != libc::EBUSY).then(|| (Locked { m: self, _thread: PhantomData }, r == libc::EOWNERDEAD))
    }

    /// The lock word, read atomically: glibc keeps the owner's tid there, and the
    /// kernel sets FUTEX_OWNER_DIED in it when that thread dies.
    pub fn futex_word(&self) -> u32 {
        // SAFETY: the first 4 bytes of a pthread_mutex_t are its futex word, an
        // aligned u32 inside our cell; read atomically, no reference to the
        // mutex's fields is formed.
        unsafe { (*(self.ptr() as *const AtomicU32)).load(Ordering::Acquire) }
    }
}

/// Proof that this thread holds a [`RawMutex`]; unlocks it when dropped. Not
/// `Send`: a mutex is unlocked by the thread that locked it.
pub struct Locked<'a> {
    m: &'a RawMutex,
    _thread: PhantomData<*const ()>,
}

impl Locked<'_> {
    /// After the owner died holding the mutex (`lock` said so) and the caller
    /// repaired what it protects: the mutex is usable again after this unlock.
    pub fn mark_consistent(&self) {
        // SAFETY: this thread holds the mutex (self proves it).
        unsafe { sys::robust_mutex_consistent(self.m.ptr()) }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: this thread holds the mutex (self proves it) and gives it up.
        unsafe { sys::robust_mutex_unlock(self.m.ptr()) }
    }
}

/// A `MAP_SHARED` mapping of a whole file, unmapped on drop. Views into it borrow
/// it, so none outlives the mapping.
pub struct SharedMap {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; everything viewed in it is Shared (Sync,
// made for concurrent access), so the map may move and be shared between threads.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes of `fd` from offset 0, read-write or read-only.
    pub fn map(fd: BorrowedFd, len: usize, writable: bool) -> SysResult<SharedMap> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new mapping at an address the kernel chooses replaces nothing.
        let a = unsafe { sys::mmap(0, len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) }?;
        let base = NonNull::new(a as *mut u8).ok_or(sys::Errno(libc::ENOMEM))?;
        Ok(SharedMap { base, len })
    }

    /// The `T` at byte offset `off`.
    ///
    /// Panics if it does not lie inside the mapping, aligned for `T`: offsets are
    /// the layout's constants, so that is a bug here, never another process's doing.
    pub fn view<T: Shared>(&self, off: usize) -> &T {
        let size = std::mem::size_of::<T>();
        assert!(off.checked_add(size).is_some_and(|end| end <= self.len), "view beyond the mapping");
        assert!((self.base.as_ptr() as usize + off).is_multiple_of(std::mem::align_of::<T>()), "misaligned view");
        // SAFETY: in bounds and aligned (checked above) in a mapping that lives as
        // long as &self; T is Shared, so any bytes are a valid T and others may
        // write them under our reference.
        unsafe { &*(self.base.as_ptr().add(off) as *const T) }
    }

    /// Element `i` of an array of `T` starting at byte offset `off`.
    pub fn element<T: Shared>(&self, off: usize, i: usize) -> &T {
        self.view(i.checked_mul(std::mem::size_of::<T>()).and_then(|d| d.checked_add(off)).expect("element offset overflows"))
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: every view borrows the map, so none is left once it drops.
        let _ = unsafe { sys::munmap(self.base.as_ptr() as usize, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    shared_struct! {
        /// A test layout: a counter, padding and a mutex.
        pub struct Demo {
            pub n: U64,
            pub small: U32,
            _pad: U32,
            pub m: RawMutex,
        }
    }

    fn map(len: usize) -> (std::os::fd::OwnedFd, SharedMap) {
        let fd = sys::memfd_create(c"shared-test", libc::MFD_CLOEXEC).unwrap();
        sys::ftruncate(fd.as_raw_fd(), len as u64).unwrap();
        let m = SharedMap::map(fd.as_fd(), len, true).unwrap();
        (fd, m)
    }

    #[test]
    fn views_see_each_others_writes_and_zero_is_zero() {
        let (_fd, m) = map(4096);
        let a: &Demo = m.view(0);
        assert_eq!(a.n.get(), 0, "a new file reads as ZERO");
        a.n.set(7);
        let b: &U64 = m.element(0, 0);
        assert_eq!(b.get(), 7, "two views of the same bytes agree");
        let last: &U32 = m.element(0, 1023);
        last.set(5);
        let zero = Demo::ZERO;
        assert_eq!(zero.n.get(), 0);
    }

    #[test]
    #[should_panic(expected = "view beyond the mapping")]
    fn a_view_past_the_end_panics() {
        let (_fd, m) = map(4096);
        let _: &U32 = m.element(0, 1024);
    }

    #[test]
    #[should_panic(expected = "misaligned view")]
    fn a_misaligned_view_panics() {
        let (_fd, m) = map(4096);
        let _: &U64 = m.view(4);
    }

    #[test]
    fn the_mutex_excludes_and_reports_a_dead_owner() {
        let (_fd, m) = map(4096);
        let d: &Demo = m.view(0);
        // SAFETY: the file is this test's own; nobody else uses the mutex.
        unsafe { d.m.init() };
        let (held, died) = d.m.lock();
        assert!(!died);
        assert!(d.m.try_lock().is_none(), "held: try_lock fails");
        assert_ne!(d.m.futex_word() & libc::FUTEX_TID_MASK, 0, "the word names the owner");
        drop(held);
        assert_eq!(d.m.futex_word() & libc::FUTEX_TID_MASK, 0, "unlocked");
        // A child locks it and dies holding it: the next locker is told.
        // SAFETY: fork in a test; the child only locks and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let (held, _) = d.m.lock();
            std::mem::forget(held);
            // SAFETY: ends the child at once, holding the mutex.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        let (held, died) = d.m.lock();
        assert!(died, "EOWNERDEAD after the owner's death");
        held.mark_consistent();
        drop(held);
        let (_held, died) = d.m.lock();
        assert!(!died, "consistent again");
    }
}
