//! The registry: one file per namespace, mapped `MAP_SHARED` by every participating
//! process. It plays the part of the kernel's `struct ipc_ids` for shm: the segment
//! table, the key index, the id allocator and the attach bookkeeping behind
//! `shm_nattch`.
//!
//! # Layout (all offsets fixed by `LAYOUT_VERSION`)
//!
//! | region   | offset          | size                         |
//! |----------|-----------------|------------------------------|
//! | header   | 0               | 4096                         |
//! | slots    | `SLOTS_OFF`     | `MAX_SLOTS * size_of::<Slot>()` |
//! | key index| `INDEX_OFF`     | `INDEX_SIZE * 4`             |
//! | procs    | `PROCS_OFF`     | `MAX_PROCS * size_of::<ProcEntry>()` |
//! | records  | `RECS_OFF`      | `MAX_RECS * size_of::<Rec>()` |
//!
//! The file is sparse: untouched pages cost nothing.
//!
//! # The lock
//!
//! One process-shared, robust `pthread_mutex_t` in the header guards everything in
//! the file except the fields marked "atomic". A holder killed by SIGKILL makes the
//! next `lock()` see `EOWNERDEAD`; that caller runs [`Registry::repair`], which
//! rebuilds every derived structure (key index, counters, record lists, `nattch`)
//! from the primary data (slot states and records), then marks the mutex
//! consistent. Every update is ordered so that the primary data is valid after any
//! prefix of it: a slot becomes visible only when its `state` is written last, and a
//! record counts only once its `proc_` field is set.
//!
//! Lock ordering: the per-process state mutex (`process::LOCAL`) is always taken
//! before the registry lock, never after. Nothing blocks on another process while
//! holding the registry lock, except the keeper hand-off: a datagram send to the
//! keeper, which never waits for the registry lock (it only try-locks), so it
//! always drains its queue.
//!
//! # Liveness
//!
//! Each live participating process holds an open-file-description lock (`F_OFD_SETLK`)
//! on byte `LIVE_BASE + i` of the namespace's `live` file, through an `O_CLOEXEC` descriptor, where `i`
//! is its entry in the proc table. Exit, SIGKILL and execve all release it, so
//! `F_OFD_GETLK` tells exactly whether an entry's owner still exists (a reused pid
//! cannot inherit it). Records of dead owners are reaped when observed.
//!
//! # Known gaps
//! - `shm_next_id` (S19) and `shm_rmid_forced` (S128–S132) are not emulated.
//! - Limits live in the header and apply to every process of the namespace.

use crate::sys::{self, Errno, SysResult};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

pub const MAGIC: [u8; 8] = *b"SHMSHIM\x01";
pub const LAYOUT_VERSION: u32 = 3;

/// Memfds the keeper makes ahead of time, so a same-uid creator needs no message
/// to the keeper (see `keeper`).
pub const POOL_SIZE: usize = 64;

/// One pooled memfd, shared lock-free between the keeper and creators (atomics):
/// - `fd` > 0: available, the keeper's descriptor number; the keeper stores `ino`
///   first, then `fd`;
/// - a creator claims it by compare-and-swap of `fd` to `-fd`, opens it, and on
///   success stores its segment's serial in `taken` (or, on failure, puts `fd`
///   back);
/// - the keeper files entries with `fd` < 0 and `taken` != 0 under that serial
///   and empties them (`taken` = 0, then `fd` = 0); a claim with `taken` = 0 that
///   outlives a full sweep under the registry lock was abandoned and is restored.
#[repr(C)]
pub struct PoolEntry {
    pub fd: AtomicI32,
    _pad: u32,
    pub ino: AtomicU64,
    pub taken: AtomicU64,
}

/// How many recent destructions the header remembers (`destroyed`).
pub const DESTROYED_RING: usize = 128;

/// IPCMNI: the largest index + 1 (S7).
pub const MAX_SLOTS: usize = 32768;
/// Key index size: a power of two, at least twice MAX_SLOTS.
pub const INDEX_SIZE: usize = 65536;
pub const MAX_PROCS: usize = 16384;
pub const MAX_RECS: usize = 131072;
/// OFD liveness locks live far beyond the data, on bytes nobody reads.
pub const LIVE_BASE: u64 = 1 << 40;

/// S10: the cyclic window is at least this wide.
pub const IPC_MIN_CYCLE: u32 = 64;
/// S11: seq wraps to 0 when it reaches this value.
pub const SEQ_MAX: u32 = (i32::MAX as u32) >> 15;

pub const SLOT_FREE: u32 = 0;
pub const SLOT_USED: u32 = 1;

pub const F_HUGETLB: u32 = 1;
pub const F_NORESERVE: u32 = 2;

pub const NIL: u32 = u32::MAX;

pub const SHM_DEST: u32 = 0o1000;
pub const SHM_LOCKED: u32 = 0o2000;

/// Registry header. Guarded by `mutex` unless marked otherwise.
#[repr(C)]
pub struct Header {
    /// Constant after creation.
    pub magic: [u8; 8],
    /// Constant after creation.
    pub version: u32,
    /// Constant after creation: size_of::<Slot>() etc, to refuse foreign layouts.
    pub slot_size: u32,
    pub proc_size: u32,
    pub rec_size: u32,
    /// Constant after creation.
    pub file_size: u64,
    _pad0: [u64; 4],
    /// The registry lock itself (offset 64).
    pub mutex: libc::pthread_mutex_t,
    _pad1: [u8; 128 - 64 - std::mem::size_of::<libc::pthread_mutex_t>()],
    /// Limits in force (S133): shmmax in bytes, shmall in pages, shmmni in segments.
    pub shmmax: u64,
    pub shmall: u64,
    pub shmmni: u64,
    /// Id allocator state (S10, S11): last index handed out, current seq, and the
    /// idr cursor (last index + 1).
    pub last_idx: i32,
    pub seq: u32,
    pub idr_next: u32,
    /// Derived: number of USED slots (S37, SHM_INFO used_ids).
    pub in_use: u32,
    /// Derived: sum of pages of USED slots (S38, SHM_INFO shm_tot).
    pub shm_tot: u64,
    /// Derived: highest USED index, or -1.
    pub max_idx: i32,
    _pad2: u32,
    /// Source of `Slot::serial`; never reused.
    pub next_serial: u64,
    /// High-water marks: slots, proc entries and records at or above these were
    /// never used, are all zero, and count as empty. Nothing beyond them is
    /// touched, so an idle namespace costs a few pages, not the whole file.
    /// Primary data (never lowered).
    pub slot_hwm: u32,
    pub proc_hwm: u32,
    pub rec_hwm: u32,
    _pad_hwm: u32,
    /// Derived: head of the free record list.
    pub rec_free: u32,
    /// Hint for the next proc entry to try.
    pub proc_hint: u32,
    /// Atomic (written under the lock): number of destructions so far; processes
    /// and the keeper compare it with what they last saw.
    pub destroy_epoch: AtomicU64,
    /// Atomic: keeper pid (0 = none) and its start time, written by the keeper.
    pub keeper_pid: AtomicI32,
    _pad3: u32,
    _pad4: u64,
    /// Atomic: bumped whenever a creator takes a pooled memfd (the keeper refills).
    pub pool_taken: AtomicU64,
    /// Atomic: 1 once a creator has asked the keeper to refill a half-empty pool;
    /// the keeper clears it when it refills.
    pub refill_asked: AtomicU64,
    /// The keeper's pool of empty memfds.
    pub pool: [PoolEntry; POOL_SIZE],
    /// Serials of the last DESTROYED_RING destroyed segments: destruction number
    /// e (destroy_epoch before it) is at e % DESTROYED_RING. Lets every process
    /// and the keeper drop descriptors of removed segments in O(removals).
    /// Atomic entries, written under the lock, read by the keeper without it.
    pub destroyed: [AtomicU64; DESTROYED_RING],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

/// One segment: the kernel's `struct shmid_kernel` as userspace sees it.
/// Guarded by the registry lock, except `keeper_fd` (atomic).
#[repr(C)]
pub struct Slot {
    pub state: u32,
    /// F_HUGETLB | F_NORESERVE.
    pub flags: u32,
    /// `__key`; 0 after IPC_RMID of an attached segment (S94).
    pub key: i32,
    /// Permission bits | SHM_DEST | SHM_LOCKED (S80).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub seq: u32,
    pub cpid: i32,
    pub lpid: i32,
    /// The uid charged for SHM_LOCK while SHM_LOCKED is set (S108).
    pub lock_uid: u32,
    /// As requested (S25).
    pub segsz: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    /// Derived from the records: live attach fragments (S72).
    pub nattch: u64,
    /// Unique per creation; ties descriptors and records to this incarnation.
    pub serial: u64,
    /// Bytes mapped by shmat: segsz rounded up to the (huge) page size.
    pub map_len: u64,
    /// ceil(segsz / 4096): what counts against shmall (S25, S47).
    pub pages: u64,
    /// Atomic, written by the keeper: (serial as u32) << 32 | keeper's fd number.
    pub keeper_fd: AtomicU64,
    /// Derived: head of this slot's record list.
    pub rec_head: u32,
    _pad: u32,
    /// Inode of the memfd: validates every descriptor before it is mapped.
    pub ino: u64,
}

/// One participating process. Guarded by the registry lock.
#[repr(C)]
pub struct ProcEntry {
    /// 0 when free.
    pub pid: i32,
    /// Derived: head of this process's record list.
    pub rec_head: u32,
    _pad: u64,
}

/// Attach fragments of one process on one segment. Guarded by the registry lock.
#[repr(C)]
pub struct Rec {
    /// Proc entry index + 1; 0 = free. Primary data.
    pub proc_: u32,
    pub slot: u32,
    pub serial: u64,
    /// Number of mapping fragments (S72). Primary data.
    pub count: u32,
    /// Derived: next record of the same process (or the free list).
    pub next_proc: u32,
    /// Derived: next record of the same slot.
    pub next_slot: u32,
    _pad: u32,
}

impl Slot {
    /// Records that the keeper holds this incarnation's memfd as its fd `fd`.
    pub fn set_keeper_fd(&self, serial: u64, fd: RawFd) {
        self.keeper_fd.store(((serial as u32 as u64) << 32) | fd as u32 as u64, Ordering::Release);
    }

    /// The keeper's fd number for incarnation `serial`, if the slot names one.
    pub fn keeper_fd_of(&self, serial: u64) -> Option<RawFd> {
        let k = self.keeper_fd.load(Ordering::Acquire);
        (k != 0 && k >> 32 == serial as u32 as u64).then_some(k as u32 as RawFd)
    }
}

pub const HEADER_SIZE: usize = 4096;
pub const SLOTS_OFF: usize = HEADER_SIZE;
pub const INDEX_OFF: usize = SLOTS_OFF + MAX_SLOTS * std::mem::size_of::<Slot>();
pub const PROCS_OFF: usize = INDEX_OFF + INDEX_SIZE * 4;
pub const RECS_OFF: usize = PROCS_OFF + MAX_PROCS * std::mem::size_of::<ProcEntry>();
pub const FILE_SIZE: usize = RECS_OFF + MAX_RECS * std::mem::size_of::<Rec>();

pub fn make_id(seq: u32, idx: u32) -> i32 {
    ((seq << 15) | idx) as i32
}

pub fn id_idx(id: i32) -> usize {
    (id as u32 & 0x7fff) as usize
}

pub fn id_seq(id: i32) -> u32 {
    (id as u32) >> 15
}

/// Why a registry file was refused.
#[derive(Debug)]
pub enum OpenError {
    Io(PathBuf, Errno, &'static str),
    Foreign(PathBuf, String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            OpenError::Io(p, e, what) => write!(f, "registry {}: {} failed: {}", p.display(), what, e.name()),
            OpenError::Foreign(p, why) => write!(f, "registry {}: {}", p.display(), why),
        }
    }
}

/// Initial limits for a new registry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub shmmax: u64,
    pub shmall: u64,
    pub shmmni: u64,
}

/// A mapped registry.
pub struct Registry {
    base: *mut u8,
    pub path: PathBuf,
    /// The descriptor the mapping came from.
    pub fd: OwnedFd,
    /// The namespace's `live` file (mode 0666): byte i is locked by proc entry i's
    /// owner. Also used for F_OFD_GETLK probes.
    pub live: AtomicI32,
    /// Inode of the live file, to recognise `live` after a program closed
    /// descriptors it did not open.
    pub live_ino: u64,
}

// SAFETY: the mapping is shared memory designed for concurrent access; all mutation
// happens under the process-shared mutex or through atomics.
unsafe impl Send for Registry {}
unsafe impl Sync for Registry {}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = sys::munmap(self.base as usize, FILE_SIZE);
        if let Some(fd) = self.live_fd() {
            sys::close(fd);
        }
    }
}

fn init_mutex(m: *mut libc::pthread_mutex_t) {
    // SAFETY: m points to zeroed, exclusively owned memory in a file nobody else has
    // opened yet (the temporary file before it is linked into place).
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(m, &attr);
        libc::pthread_mutexattr_destroy(&mut attr);
    }
}

fn path_c(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

impl Registry {
    /// Opens the registry in `dir`, creating it atomically if absent: the new file is
    /// built completely under a temporary name and then linked into place, so no
    /// process ever sees a half-initialised registry.
    pub fn open_or_create(dir: &Path, limits: Limits, shared: bool) -> Result<Registry, OpenError> {
        let path = dir.join("registry");
        let cpath = path_c(&path);
        for _ in 0..100 {
            match sys::open(&cpath, libc::O_RDWR, 0) {
                Ok(fd) => return Self::map_existing(path, fd, open_live(dir)?),
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(OpenError::Io(path, e, "open")),
            }
            let tmp = dir.join(format!(".registry.{}.{}", sys::getpid(), sys::gettid()));
            let ctmp = path_c(&tmp);
            let mode = if shared { 0o666 } else { 0o600 };
            let fd = sys::open(&ctmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode)
                .map_err(|e| OpenError::Io(tmp.clone(), e, "create"))?;
            if shared {
                // SAFETY: fchmod on our own new descriptor; umask would narrow the mode.
                unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
            }
            let live = open_live(dir)?;
            let live_ino = sys::fstat(live.as_raw_fd()).map(|st| st.st_ino).unwrap_or(0);
            let live = AtomicI32::new(std::os::fd::IntoRawFd::into_raw_fd(live));
            let built = sys::ftruncate(fd.as_raw_fd(), FILE_SIZE as u64)
                .and_then(|_| map_fd(&fd))
                .map(|base| {
                    let reg = Registry { base, path: tmp.clone(), fd, live, live_ino };
                    reg.init_header(limits);
                    reg
                });
            let reg = match built {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(OpenError::Io(tmp, e, "initialise"));
                }
            };
            // SAFETY: both paths are NUL-terminated C strings.
            let linked = unsafe { libc::link(ctmp.as_ptr(), cpath.as_ptr()) };
            let link_err = Errno::last();
            let _ = std::fs::remove_file(&tmp);
            if linked == 0 {
                let mut reg = reg;
                reg.path = path;
                return Ok(reg);
            }
            if link_err.0 != libc::EEXIST {
                return Err(OpenError::Io(path, link_err, "link"));
            }
            // Somebody else won the race: use theirs.
        }
        Err(OpenError::Foreign(path, "could not be created or opened".into()))
    }

    fn map_existing(path: PathBuf, fd: OwnedFd, live: OwnedFd) -> Result<Registry, OpenError> {
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| OpenError::Io(path.clone(), e, "fstat"))?;
        if st.st_size as usize != FILE_SIZE {
            let why = if st.st_size < HEADER_SIZE as i64 {
                format!("is {} bytes, not a shmshim registry (expected {} bytes); remove it if no shmshim process uses this directory", st.st_size, FILE_SIZE)
            } else {
                format!("has size {} instead of {} (truncated, or from another shmshim version)", st.st_size, FILE_SIZE)
            };
            return Err(OpenError::Foreign(path, why));
        }
        let base = map_fd(&fd).map_err(|e| OpenError::Io(path.clone(), e, "mmap"))?;
        let live_ino = sys::fstat(live.as_raw_fd()).map(|st| st.st_ino).unwrap_or(0);
        let live = AtomicI32::new(std::os::fd::IntoRawFd::into_raw_fd(live));
        let reg = Registry { base, path, fd, live, live_ino };
        reg.validate_header()?;
        Ok(reg)
    }

    fn validate_header(&self) -> Result<(), OpenError> {
        let h = self.header();
        if h.magic != MAGIC {
            return Err(OpenError::Foreign(self.path.clone(), "bad magic: not a shmshim registry".into()));
        }
        if h.version != LAYOUT_VERSION
            || h.slot_size as usize != std::mem::size_of::<Slot>()
            || h.proc_size as usize != std::mem::size_of::<ProcEntry>()
            || h.rec_size as usize != std::mem::size_of::<Rec>()
            || h.file_size as usize != FILE_SIZE
        {
            return Err(OpenError::Foreign(
                self.path.clone(),
                format!("layout version {} is not supported (this shmshim speaks version {})", h.version, LAYOUT_VERSION),
            ));
        }
        Ok(())
    }

    fn init_header(&self, limits: Limits) {
        let h = self.header_mut();
        h.magic = MAGIC;
        h.version = LAYOUT_VERSION;
        h.slot_size = std::mem::size_of::<Slot>() as u32;
        h.proc_size = std::mem::size_of::<ProcEntry>() as u32;
        h.rec_size = std::mem::size_of::<Rec>() as u32;
        h.file_size = FILE_SIZE as u64;
        init_mutex(&mut h.mutex);
        h.shmmax = limits.shmmax;
        h.shmall = limits.shmall;
        h.shmmni = limits.shmmni;
        h.last_idx = -1;
        h.seq = 0;
        h.idr_next = 0;
        h.max_idx = -1;
        h.next_serial = 1;
        // Everything else starts empty by being beyond the high-water marks.
        h.rec_free = NIL;
    }

    pub fn header(&self) -> &Header {
        // SAFETY: base maps FILE_SIZE bytes; Header fits at offset 0.
        unsafe { &*(self.base as *const Header) }
    }

    #[allow(clippy::mut_from_ref)]
    fn header_mut(&self) -> &mut Header {
        // SAFETY: as above; callers hold the registry lock (or own the file exclusively
        // during creation) for non-atomic fields.
        unsafe { &mut *(self.base as *mut Header) }
    }

    /// Unlocked, read-only peek at a slot (used for atomics only).
    pub fn slot_ref(&self, i: usize) -> &Slot {
        assert!(i < MAX_SLOTS);
        // SAFETY: i < MAX_SLOTS keeps the pointer inside the slots region.
        unsafe { &*(self.base.add(SLOTS_OFF) as *const Slot).add(i) }
    }

    /// Takes the registry lock, repairing the registry if a holder died.
    pub fn lock(&self) -> RegGuard<'_> {
        let m = &self.header_mut().mutex as *const _ as *mut libc::pthread_mutex_t;
        // SAFETY: m is the process-shared robust mutex initialised at creation.
        let r = unsafe { libc::pthread_mutex_lock(m) };
        let g = RegGuard { reg: self };
        if r == libc::EOWNERDEAD {
            g.repair();
            // SAFETY: we hold the mutex and have restored every invariant.
            unsafe { libc::pthread_mutex_consistent(m) };
        }
        g
    }

    /// Takes the lock only if it is free (the keeper uses this: it must never wait
    /// for a holder that may be waiting for the keeper to drain its socket).
    pub fn try_lock(&self) -> Option<RegGuard<'_>> {
        let m = &self.header_mut().mutex as *const _ as *mut libc::pthread_mutex_t;
        // SAFETY: m is the process-shared robust mutex initialised at creation.
        let r = unsafe { libc::pthread_mutex_trylock(m) };
        match r {
            0 => Some(RegGuard { reg: self }),
            libc::EOWNERDEAD => {
                let g = RegGuard { reg: self };
                g.repair();
                // SAFETY: we hold the mutex and have restored every invariant.
                unsafe { libc::pthread_mutex_consistent(m) };
                Some(g)
            }
            _ => None,
        }
    }

    /// Sets limits (from environment overrides): like writing the sysctls.
    pub fn set_limits(&self, shmmax: Option<u64>, shmall: Option<u64>, shmmni: Option<u64>) {
        let g = self.lock();
        let h = g.reg.header_mut();
        if let Some(v) = shmmax {
            h.shmmax = v;
        }
        if let Some(v) = shmall {
            h.shmall = v;
        }
        if let Some(v) = shmmni {
            h.shmmni = v.min(MAX_SLOTS as u64);
        }
    }

    /// Our descriptor of the live file. A program that closes descriptors it did
    /// not open may take it away; it is then reopened by path (or, if that is
    /// impossible, `None`).
    pub fn live_fd(&self) -> Option<RawFd> {
        let fd = self.live.load(Ordering::Acquire);
        if matches!(sys::fstat(fd), Ok(st) if st.st_ino == self.live_ino) {
            return Some(fd);
        }
        let p = self.path.with_file_name("live");
        let new = sys::open(&path_c(&p), libc::O_RDWR, 0).ok()?;
        if sys::fstat(new.as_raw_fd()).map(|st| st.st_ino != self.live_ino).unwrap_or(true) {
            return None;
        }
        let new = std::os::fd::IntoRawFd::into_raw_fd(crate::process::high_fd(new));
        // The old number is not closed: it may be the program's now.
        self.live.store(new, Ordering::Release);
        Some(new)
    }

    /// Liveness probe: does someone hold proc entry `i`'s OFD lock? A "no" is
    /// believed only through a descriptor known to be the live file; when none can
    /// be had, nobody is declared dead.
    pub fn proc_alive(&self, i: usize) -> bool {
        if sys::ofd_is_locked(self.live.load(Ordering::Acquire), LIVE_BASE + i as u64) {
            return true;
        }
        match self.live_fd() {
            Some(fd) => sys::ofd_is_locked(fd, LIVE_BASE + i as u64),
            None => true,
        }
    }
}

/// Opens (creating) the namespace's liveness file, mode 0666 so processes that drop
/// to another uid can still reopen it through /proc/self/fd.
fn open_live(dir: &Path) -> Result<OwnedFd, OpenError> {
    let p = dir.join("live");
    let fd = sys::open(&path_c(&p), libc::O_RDWR | libc::O_CREAT, 0o666).map_err(|e| OpenError::Io(p, e, "open"))?;
    // SAFETY: fchmod on our own descriptor (umask narrowed the creation mode).
    unsafe { libc::fchmod(fd.as_raw_fd(), 0o666) };
    Ok(fd)
}

fn map_fd(fd: &OwnedFd) -> SysResult<*mut u8> {
    sys::mmap(0, FILE_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        .map(|a| a as *mut u8)
}

/// Proof of holding the registry lock; all mutation goes through it.
pub struct RegGuard<'a> {
    pub reg: &'a Registry,
}

impl Drop for RegGuard<'_> {
    fn drop(&mut self) {
        let m = &self.reg.header_mut().mutex as *const _ as *mut libc::pthread_mutex_t;
        // SAFETY: this guard exists only while we hold the mutex.
        unsafe { libc::pthread_mutex_unlock(m) };
    }
}

fn key_hash(key: i32) -> usize {
    ((key as u32).wrapping_mul(0x9E37_79B9) >> 16) as usize & (INDEX_SIZE - 1)
}

impl<'a> RegGuard<'a> {
    #[allow(clippy::mut_from_ref)]
    pub fn hdr(&self) -> &mut Header {
        self.reg.header_mut()
    }

    #[allow(clippy::mut_from_ref)]
    pub fn slot(&self, i: usize) -> &mut Slot {
        assert!(i < MAX_SLOTS);
        // SAFETY: bounds checked; the lock serialises access.
        unsafe { &mut *(self.reg.base.add(SLOTS_OFF) as *mut Slot).add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    fn index(&self, i: usize) -> &mut u32 {
        assert!(i < INDEX_SIZE);
        // SAFETY: bounds checked; the lock serialises access.
        unsafe { &mut *(self.reg.base.add(INDEX_OFF) as *mut u32).add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    pub fn proc_entry(&self, i: usize) -> &mut ProcEntry {
        assert!(i < MAX_PROCS);
        // SAFETY: bounds checked; the lock serialises access.
        unsafe { &mut *(self.reg.base.add(PROCS_OFF) as *mut ProcEntry).add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    pub fn rec(&self, i: usize) -> &mut Rec {
        assert!(i < MAX_RECS);
        // SAFETY: bounds checked; the lock serialises access.
        unsafe { &mut *(self.reg.base.add(RECS_OFF) as *mut Rec).add(i) }
    }

    // ------------------------------------------------------------- key index

    /// O(1) lookup of a live (non-DEST) segment by key. Key 0 is never indexed (S18).
    pub fn find_key(&self, key: i32) -> Option<usize> {
        let mut h = key_hash(key);
        for _ in 0..INDEX_SIZE {
            let v = *self.index(h);
            if v == 0 {
                return None;
            }
            let s = (v - 1) as usize;
            if s < MAX_SLOTS {
                let sl = self.slot(s);
                if sl.state == SLOT_USED && sl.key == key && sl.mode & SHM_DEST == 0 {
                    return Some(s);
                }
            }
            h = (h + 1) & (INDEX_SIZE - 1);
        }
        None
    }

    pub fn index_insert(&self, key: i32, slot: usize) {
        let mut h = key_hash(key);
        for _ in 0..INDEX_SIZE {
            if *self.index(h) == 0 {
                *self.index(h) = slot as u32 + 1;
                return;
            }
            h = (h + 1) & (INDEX_SIZE - 1);
        }
    }

    /// Removes `slot` from the index (backward-shift deletion keeps probes short).
    pub fn index_remove(&self, key: i32, slot: usize) {
        let mut h = key_hash(key);
        let mut found = false;
        for _ in 0..INDEX_SIZE {
            let v = *self.index(h);
            if v == 0 {
                return;
            }
            if v == slot as u32 + 1 {
                found = true;
                break;
            }
            h = (h + 1) & (INDEX_SIZE - 1);
        }
        if !found {
            return;
        }
        let mut hole = h;
        let mut j = h;
        for _ in 0..INDEX_SIZE {
            j = (j + 1) & (INDEX_SIZE - 1);
            let v = *self.index(j);
            if v == 0 || (v - 1) as usize >= MAX_SLOTS {
                break;
            }
            let home = key_hash(self.slot((v - 1) as usize).key);
            // Can the entry at j move into the hole? Only if its home is not in (hole, j].
            let dist_hole = hole.wrapping_sub(home) & (INDEX_SIZE - 1);
            let dist_j = j.wrapping_sub(home) & (INDEX_SIZE - 1);
            if dist_hole < dist_j {
                *self.index(hole) = v;
                hole = j;
            }
        }
        *self.index(hole) = 0;
    }

    // ------------------------------------------------------------- ids

    /// Allocates an index like the kernel's ipc_idr_alloc (S10, S11) and returns
    /// (idx, seq). The caller has checked in_use < shmmni.
    pub fn alloc_idx(&self) -> Option<(usize, u32)> {
        let h = self.hdr();
        let window = (h.in_use * 3 / 2).max(IPC_MIN_CYCLE).min(MAX_SLOTS as u32) as usize;
        let free_from = |start: usize| (start..window).find(|&i| self.slot(i).state == SLOT_FREE);
        let start = h.idr_next as usize;
        let idx = free_from(start).or_else(|| if start > 0 { free_from(0) } else { None })?;
        h.idr_next = idx as u32 + 1;
        h.slot_hwm = h.slot_hwm.max(idx as u32 + 1);
        if idx as i32 <= h.last_idx {
            h.seq += 1;
            if h.seq >= SEQ_MAX {
                h.seq = 0;
            }
        }
        h.last_idx = idx as i32;
        Some((idx, h.seq))
    }

    /// Resolves an id to its slot, checking idx and seq (S13, S14).
    pub fn slot_of_id(&self, id: i32) -> Option<usize> {
        if id < 0 {
            return None;
        }
        let idx = id_idx(id);
        let s = self.slot(idx);
        if s.state == SLOT_USED && s.seq == id_seq(id) {
            Some(idx)
        } else {
            None
        }
    }

    // ------------------------------------------------------------- records

    /// Walks a record list from `head`, following `next`; bounded, so a list
    /// scribbled into a cycle or out of range ends the walk instead of hanging.
    fn walk(&self, head: u32, next: fn(&Rec) -> u32) -> impl Iterator<Item = u32> + '_ {
        let mut r = head;
        let mut steps = 0;
        std::iter::from_fn(move || {
            if r == NIL || r as usize >= MAX_RECS || steps >= MAX_RECS {
                return None;
            }
            steps += 1;
            let cur = r;
            r = next(self.rec(cur as usize));
            Some(cur)
        })
    }

    /// The records of process entry `p`.
    pub fn proc_recs(&self, p: usize) -> impl Iterator<Item = u32> + '_ {
        self.walk(self.proc_entry(p).rec_head, |r| r.next_proc)
    }

    /// The records of `slot`.
    pub fn slot_recs(&self, slot: usize) -> impl Iterator<Item = u32> + '_ {
        self.walk(self.slot(slot).rec_head, |r| r.next_slot)
    }

    /// Process `p`'s record for the current incarnation of `slot`.
    fn find_rec(&self, p: usize, slot: usize) -> Option<u32> {
        let serial = self.slot(slot).serial;
        self.proc_recs(p).find(|&r| {
            let rec = self.rec(r as usize);
            rec.slot as usize == slot && rec.serial == serial
        })
    }

    /// Adds `n` fragments of `slot` to process entry `p`.
    pub fn rec_add(&self, p: usize, slot: usize, n: u32) -> SysResult<()> {
        if let Some(r) = self.find_rec(p, slot) {
            self.rec(r as usize).count += n;
            self.slot(slot).nattch += n as u64;
            return Ok(());
        }
        let serial = self.slot(slot).serial;
        let h = self.hdr();
        let r = if h.rec_free != NIL && (h.rec_free as usize) < MAX_RECS {
            let r = h.rec_free;
            h.rec_free = self.rec(r as usize).next_proc;
            r
        } else if (h.rec_hwm as usize) < MAX_RECS {
            h.rec_hwm += 1;
            h.rec_hwm - 1
        } else {
            return Err(Errno(libc::ENOMEM));
        };
        let rec = self.rec(r as usize);
        rec.slot = slot as u32;
        rec.serial = serial;
        rec.count = n;
        rec.next_proc = self.proc_entry(p).rec_head;
        rec.next_slot = self.slot(slot).rec_head;
        rec.proc_ = p as u32 + 1; // primary: the record counts from here on
        self.proc_entry(p).rec_head = r;
        self.slot(slot).rec_head = r;
        self.slot(slot).nattch += n as u64;
        Ok(())
    }

    /// Removes `n` fragments of `slot` from process entry `p`.
    pub fn rec_sub(&self, p: usize, slot: usize, n: u32) {
        if let Some(r) = self.find_rec(p, slot) {
            let rec = self.rec(r as usize);
            let n = n.min(rec.count);
            rec.count -= n;
            self.slot(slot).nattch -= n as u64;
            if rec.count == 0 {
                self.rec_free(r);
            }
        }
    }

    /// Unlinks record `r` from both lists and frees it.
    fn rec_free(&self, r: u32) {
        let rec = self.rec(r as usize);
        let p = rec.proc_ as usize - 1;
        let slot = rec.slot as usize;
        rec.proc_ = 0; // primary: the record no longer counts
        unlink(&mut self.proc_entry(p).rec_head, r, |x| &mut self.rec(x as usize).next_proc);
        unlink(&mut self.slot(slot).rec_head, r, |x| &mut self.rec(x as usize).next_slot);
        let h = self.hdr();
        self.rec(r as usize).next_proc = h.rec_free;
        h.rec_free = r;
    }

    /// Drops every record of process entry `p` (it died or exec'd): each of its
    /// fragments is detached as exit would (S120–S123). Returns the slots touched.
    pub fn reap_proc(&self, p: usize, now: i64) -> Vec<usize> {
        let pid = self.proc_entry(p).pid;
        let mut touched = Vec::new();
        let mut steps = 0;
        while self.proc_entry(p).rec_head != NIL && steps <= MAX_RECS {
            steps += 1;
            let r = self.proc_entry(p).rec_head;
            if r as usize >= MAX_RECS || self.rec(r as usize).proc_ as usize != p + 1 {
                // A list that does not hold up: rebuild it from the records.
                self.rebuild_lists();
                continue;
            }
            let rec = self.rec(r as usize);
            let slot = rec.slot as usize;
            let n = rec.count;
            let s = self.slot(slot);
            s.nattch -= (n as u64).min(s.nattch);
            s.dtime = now;
            s.lpid = pid;
            self.rec_free(r);
            touched.push(slot);
        }
        self.proc_entry(p).pid = 0;
        touched
    }

    /// Procs holding records on `slot`, other than `me`.
    pub fn slot_holders(&self, slot: usize, me: Option<usize>) -> Vec<usize> {
        let mut out = Vec::new();
        for r in self.slot_recs(slot) {
            let rec = self.rec(r as usize);
            if rec.proc_ == 0 || rec.proc_ as usize > MAX_PROCS {
                break;
            }
            let p = rec.proc_ as usize - 1;
            if Some(p) != me && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Every proc entry in use, other than `me`.
    pub fn all_procs(&self, me: Option<usize>) -> Vec<usize> {
        (0..self.proc_hwm()).filter(|&p| Some(p) != me && (self.proc_entry(p).pid != 0 || self.proc_entry(p).rec_head != NIL)).collect()
    }

    fn proc_hwm(&self) -> usize {
        (self.hdr().proc_hwm as usize).min(MAX_PROCS)
    }

    /// Makes entries up to `p` valid (empty) before first use.
    pub fn open_proc_entry(&self, p: usize) {
        let h = self.hdr();
        while (h.proc_hwm as usize) <= p && (h.proc_hwm as usize) < MAX_PROCS {
            let e = self.proc_entry(h.proc_hwm as usize);
            e.pid = 0;
            e.rec_head = NIL;
            h.proc_hwm += 1;
        }
    }

    // ------------------------------------------------------------- repair

    /// Rebuilds every derived structure from primary data. Idempotent, so a holder
    /// that dies while repairing is repaired after in turn.
    pub fn repair(&self) {
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.state != SLOT_USED {
                s.state = SLOT_FREE;
            }
        }
        self.rebuild_lists();
        // A holder killed between the last detach of a removed segment and its
        // destruction (S75) leaves it SHM_DEST with nattch 0: finish the job.
        let h = self.hdr();
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.state == SLOT_USED && s.mode & SHM_DEST != 0 && s.nattch == 0 {
                s.state = SLOT_FREE;
                self.record_destroyed(s.serial);
            }
        }
        for i in 0..INDEX_SIZE {
            // Only non-empty buckets are written: pages never used stay holes.
            if *self.index(i) != 0 {
                *self.index(i) = 0;
            }
        }
        h.in_use = 0;
        h.shm_tot = 0;
        h.max_idx = -1;
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.state != SLOT_USED {
                continue;
            }
            h.in_use += 1;
            h.shm_tot += s.pages;
            h.max_idx = i as i32;
            if s.key != 0 && s.mode & SHM_DEST == 0 {
                self.index_insert(s.key, i);
            }
        }
    }

    /// Rebuilds record lists, the free list and every nattch from the records.
    fn rebuild_lists(&self) {
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            s.rec_head = NIL;
            s.nattch = 0;
        }
        for p in 0..self.proc_hwm() {
            self.proc_entry(p).rec_head = NIL;
        }
        let h = self.hdr();
        h.rec_free = NIL;
        h.rec_hwm = h.rec_hwm.min(MAX_RECS as u32);
        for r in (0..h.rec_hwm as usize).rev() {
            let rec = self.rec(r);
            let valid = rec.proc_ != 0
                && (rec.proc_ as usize) <= self.proc_hwm()
                && (rec.slot as usize) < self.slot_hwm()
                && rec.count > 0
                && self.slot(rec.slot as usize).state == SLOT_USED
                && self.slot(rec.slot as usize).serial == rec.serial;
            if !valid {
                rec.proc_ = 0;
                rec.next_proc = h.rec_free;
                h.rec_free = r as u32;
                continue;
            }
            let p = rec.proc_ as usize - 1;
            let s = rec.slot as usize;
            rec.next_proc = self.proc_entry(p).rec_head;
            self.proc_entry(p).rec_head = r as u32;
            rec.next_slot = self.slot(s).rec_head;
            self.slot(s).rec_head = r as u32;
            self.slot(s).nattch += rec.count as u64;
        }
    }

    fn slot_hwm(&self) -> usize {
        (self.hdr().slot_hwm as usize).min(MAX_SLOTS)
    }

    /// Appends a destroyed segment to the header's ring and bumps destroy_epoch,
    /// so processes and the keeper drop their descriptors of it.
    pub fn record_destroyed(&self, serial: u64) {
        let h = self.hdr();
        let e = h.destroy_epoch.load(Ordering::Acquire);
        h.destroyed[e as usize % DESTROYED_RING].store(serial, Ordering::Release);
        h.destroy_epoch.store(e + 1, Ordering::Release);
    }

    /// Recomputes max_idx after a slot was freed.
    pub fn recompute_max_idx(&self) {
        let h = self.hdr();
        let mut m = h.max_idx;
        while m >= 0 && self.slot(m as usize).state != SLOT_USED {
            m -= 1;
        }
        h.max_idx = m;
    }

    /// Checks every invariant; used by tests and `shmshim check`.
    pub fn check_invariants(&self) -> Result<(), String> {
        let h = self.hdr();
        let mut in_use = 0;
        let mut tot = 0;
        let mut max = -1;
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.state == SLOT_USED {
                in_use += 1;
                tot += s.pages;
                max = i as i32;
                if s.key != 0 && s.mode & SHM_DEST == 0 && self.find_key(s.key) != Some(i) {
                    return Err(format!("slot {i}: key {} not indexed", s.key));
                }
                let n: u64 = self.slot_recs(i).map(|r| self.rec(r as usize).count as u64).sum();
                if n != s.nattch {
                    return Err(format!("slot {i}: nattch {} but records say {n}", s.nattch));
                }
                if s.mode & SHM_DEST != 0 && s.nattch == 0 {
                    return Err(format!("slot {i}: removed (SHM_DEST) with nattch 0 but not destroyed"));
                }
            }
        }
        if in_use != h.in_use || tot != h.shm_tot || max != h.max_idx {
            return Err(format!(
                "counters: in_use {}/{in_use} shm_tot {}/{tot} max_idx {}/{max}",
                h.in_use, h.shm_tot, h.max_idx
            ));
        }
        Ok(())
    }
}

fn unlink(head: &mut u32, r: u32, next: impl Fn(u32) -> *mut u32) {
    let mut cur: *mut u32 = head;
    // SAFETY: every pointer comes from `next`, which points into the records region
    // of the mapping, or is `head` itself; the lock serialises access.
    unsafe {
        for _ in 0..MAX_RECS {
            if *cur == NIL || *cur as usize >= MAX_RECS {
                return;
            }
            if *cur == r {
                *cur = *next(r);
                return;
            }
            cur = next(*cur);
        }
    }
}
