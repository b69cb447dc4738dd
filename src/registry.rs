//! The registry: one file per namespace, mapped `MAP_SHARED` by every participant.
//! It plays the part of the kernel's `struct ipc_ids` for shm: the segment table,
//! the key index, the id allocator and the attach bookkeeping behind `shm_nattch`.
//!
//! # Layout (all offsets fixed by `LAYOUT_VERSION`)
//!
//! | region   | offset          | size                              |
//! |----------|-----------------|-----------------------------------|
//! | header   | 0               | `HEADER_SIZE` (16384)             |
//! | slots    | `SLOTS_OFF`     | `MAX_SLOTS * size_of::<Slot>()`   |
//! | key index| `INDEX_OFF`     | `INDEX_SIZE * 4`                  |
//! | procs    | `PROCS_OFF`     | `MAX_PROCS * size_of::<ProcEntry>()` |
//! | records  | `RECS_OFF`      | `MAX_RECS * size_of::<Rec>()`     |
//! | published slots | `PUB_SLOTS_OFF` | `MAX_SLOTS * size_of::<Slot>()` |
//! | published index | `PUB_INDEX_OFF` | `INDEX_SIZE * 4`           |
//!
//! The file is sparse. Header and both indexes are allocated (`fallocate`) when the
//! file is built; slots (with their published copies), proc entries and records are allocated in chunks before the first
//! one of a chunk is used, and nothing beyond the allocated chunks is ever read or
//! written: a full filesystem makes the call that needs a new chunk fail with
//! `ENOSPC` (SEMANTICS L9), never a later access raise `SIGBUS`.
//!
//! # Soundness
//!
//! Every shared field is a [`crate::cell`] atomic or a [`RawMutex`] (an
//! `UnsafeCell` reached only through pthread calls): the structs are declared with
//! [`shared_struct!`], which proves that, so the references this module hands out
//! never cover a byte another process could write behind Rust's back. The mapping
//! and the mutex calls are in `shared.rs`; this module has no `unsafe` but the
//! mutexes' initialisation in a file nobody else has opened. Holding the lock is a
//! [`RegGuard`], whose mutating methods take `&mut self`.
//!
//! # The lock, and what readers see without it
//!
//! One process-shared, robust `pthread_mutex_t` in the header serialises writers.
//! A holder killed by SIGKILL makes the next `lock()` see `EOWNERDEAD`; that caller
//! runs [`RegGuard::repair`], which rebuilds every derived structure (key index,
//! counters, record lists, `nattch`) from the primary data (slot states, records),
//! then marks the mutex consistent. Updates are ordered so the primary data is
//! valid after any prefix: a slot becomes visible when its `state` is written last,
//! and a record counts once its `proc_` field is set.
//!
//! Lookups, `IPC_STAT`, `SHM_STAT` and the sysctls read without the lock
//! ([`Registry::read`]), and no writer can hold them up, not even one stopped in
//! the middle of an update: what they read exists twice. The live tables (slots,
//! key index, the counters in the header) are what writers change under the lock;
//! the published copies (`PUB_SLOTS_OFF`, `PUB_INDEX_OFF`, `Header::published`)
//! lag behind by at most one update. `Header::seq` says which one a reader may
//! trust: while it is even the published copy (writers leave it alone while they
//! work on the live tables), while it is odd the live tables (complete: the
//! writer is only copying them). When the guard drops, the writer makes `seq`
//! odd, copies what it changed (the slots and index cells its accessors marked)
//! into the published copy, and makes `seq` even again. A reader retries only if
//! `seq` moved while it read, which a stopped writer never makes it do.
//! `Header::busy` is odd while the lock is held, for the one reader of live
//! tables without the lock (`shmshim check` of a shared namespace).
//!
//! Lock order (also in docs/ARCHITECTURE.md): `process::LOCAL` → registry lock.
//! Nothing blocks while the registry lock is held: no send that can wait, no spawn,
//! no sleep.
//!
//! # Known gaps
//! - Limits live in the header and apply to every process of the namespace.

use crate::cell::{I32, I64, U32, U64};
use crate::shared::{shared_struct, Locked, RawMutex, Shared, SharedMap};
use crate::sys::{self, Errno, SysResult};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};

pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMSHIM\x02");
pub const LAYOUT_VERSION: u32 = 9;

/// Memfds the server makes ahead of time, so a creator of a private namespace needs
/// no message to the server (see `server`).
pub const POOL_SIZE: usize = 256;

shared_struct! {
    /// One pooled memfd, shared lock-free between the server and creators:
    /// - `fd` > 0: available, the server's descriptor number; the server stores `ino`
    ///   first, then `fd`;
    /// - a creator claims it by compare-and-swap of `fd` to `-fd`, opens it, and on
    ///   success stores its segment's serial in `taken` (or, on failure, puts `fd`
    ///   back);
    /// - the server files entries with `fd` < 0 and `taken` != 0 under that serial and
    ///   empties them (`taken` = 0, then `fd` = 0); a claim with `taken` = 0 that
    ///   outlives a sweep under the registry lock was abandoned and is restored.
    pub struct PoolEntry {
        pub fd: AtomicI32,
        _pad: U32,
        pub ino: AtomicU64,
        pub taken: AtomicU64,
    }
}

/// Zero-fills that may run at once in a namespace (`Header::fills`).
pub const FILLS: usize = 16;

shared_struct! {
    /// A populate in progress that writes zeros into the holes of a segment's
    /// memfd (see `shm::populate_read`): while it is set no other attach of the
    /// segment may begin, so no writer but the filling thread can reach a page the
    /// zeros are about to cover. Claimed under the registry lock (with the check
    /// that the filler holds every attach); freed with a plain store by the filler,
    /// or by whoever finds its process gone (its entry freed or claimed again).
    pub struct FillEntry {
        /// The segment's serial; 0: free.
        pub serial: AtomicU64,
        /// The filling process's proc entry and its generation.
        pub entry: U32,
        pub gen: U32,
        /// Set by an attach that found the fill in progress: the filler stops
        /// filling at its next chunk and leaves the rest to the kernel's populate.
        pub wanted: AtomicU32,
        _pad: U32,
    }
}

/// How long a participant's call waits for the registry lock (`lock_bounded`).
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many recent destructions the header remembers (`destroyed`).
pub const DESTROYED_RING: usize = 512;

/// IPCMNI: the largest index + 1 (S7).
pub const MAX_SLOTS: usize = 32768;
/// Key index size: a power of two, at least twice MAX_SLOTS.
pub const INDEX_SIZE: usize = 65536;
pub const MAX_PROCS: usize = 16384;
pub const MAX_RECS: usize = 131072;
/// Slots, proc entries and records are allocated in chunks of this many bytes.
const CHUNK: usize = 64 * 1024;

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

shared_struct! {
    /// Registry header. Guarded by the lock unless marked otherwise.
    pub struct Header {
        /// Constant after creation.
        pub magic: U64,
        /// Constant after creation.
        pub version: U32,
        /// Constant after creation: size_of::<Slot>() etc, to refuse foreign layouts.
        pub slot_size: U32,
        pub proc_size: U32,
        pub rec_size: U32,
        /// Constant after creation.
        pub file_size: U64,
        /// Constant after creation: 1 for a shared (multi-user) namespace, whose only
        /// writer is its server.
        pub shared: U32,
        _pad0: [U32; 7],
        /// The registry lock itself (offset 64).
        mutex: RawMutex,
        _pad1: [U32; (128 - 64 - std::mem::size_of::<RawMutex>()) / 4],
        /// Atomic: which copy lock-free readers trust, even the published one, odd
        /// the live tables (see the module comment).
        pub seq: U64,
        /// Atomic: odd while a writer holds the lock.
        pub busy: U64,
        /// The counters as last published (see the module comment).
        pub published: Stats,
        /// Limits in force (S133): shmmax in bytes, shmall in pages, shmmni in segments.
        pub shmmax: U64,
        pub shmall: U64,
        pub shmmni: U64,
        /// Id allocator state (S10, S11): last index handed out, current seq, and the
        /// idr cursor (last index + 1).
        pub last_idx: I32,
        pub idr_seq: U32,
        pub idr_next: U32,
        /// Derived: number of USED slots (S37, SHM_INFO used_ids).
        pub in_use: U32,
        /// Derived: sum of pages of USED slots (S38, SHM_INFO shm_tot).
        pub shm_tot: U64,
        /// Derived: highest USED index, or -1.
        pub max_idx: I32,
        _pad2: U32,
        /// Source of `Slot::serial`; never reused.
        pub next_serial: U64,
        /// High-water marks: entries at or above these were never used and count as
        /// empty. Primary data (never lowered).
        pub slot_hwm: U32,
        pub proc_hwm: U32,
        pub rec_hwm: U32,
        /// Derived: head of the free record list.
        pub rec_free: U32,
        /// Entries below these are allocated on the filesystem (see the module comment).
        pub slots_backed: U32,
        pub procs_backed: U32,
        pub recs_backed: U32,
        /// Hint for the next proc entry to try.
        pub proc_hint: U32,
        /// Atomic (written under the lock): number of destructions so far.
        pub destroy_epoch: U64,
        /// Atomic, written by the server: its pid (0 = none).
        pub server_pid: I32,
        _pad3: U32,
        /// Atomic, written by the server: bumped by each server that starts.
        pub server_gen: U64,
        /// A robust mutex the running server holds for its whole life: when it dies, the kernel marks the mutex's word
        /// "owner died", so anyone can tell a live server with one load.
        server_alive: RawMutex,
        /// Atomic: bumped whenever a creator takes a pooled memfd (the server refills).
        pub pool_taken: U64,
        /// Atomic, written by the server: memfds it has put in the pool so far (minus
        /// `pool_taken`, about how many are left; re-counted at each full sweep).
        pub pool_filled: U64,
        /// Atomic: 1 once a creator has asked the server to refill a pool a quarter empty;
        /// the server clears it when it refills.
        pub refill_asked: U64,
        /// Atomic, written by the server: the destroy_epoch up to which it has closed
        /// its descriptors of destroyed segments (their memory is free once no
        /// process maps them or caches a descriptor).
        pub released_epoch: U64,
        /// kernel.shm_rmid_forced (S128–S132): 1 destroys segments at their last
        /// detach and orphans at their creator's exit.
        pub rmid_forced: U32,
        /// kernel.shm_next_id (S19): the id the next creation takes, or -1.
        pub next_id: I32,
        /// The server's pool of empty memfds.
        pub pool: [PoolEntry; POOL_SIZE],
        /// Serials of the last DESTROYED_RING destroyed segments: destruction number e
        /// (destroy_epoch before it) is at e % DESTROYED_RING. Lets processes and the
        /// server drop descriptors of removed segments in O(removals).
        pub destroyed: [U64; DESTROYED_RING],
        /// Atomic: beside `destroyed`, the serial of that destruction once a process
        /// holding a descriptor of the memfd has emptied it (ftruncate to 0): its
        /// memory is free whoever still holds a descriptor, the server included.
        pub emptied: [U64; DESTROYED_RING],
        /// Zero-fills in progress (not published: only holders of the lock read them).
        pub fills: [FillEntry; FILLS],
    }
}

shared_struct! {
    /// The header's counters and limits that readers without the lock see: the
    /// published copy of the header fields of the same names.
    pub struct Stats {
        pub shmmax: U64,
        pub shmall: U64,
        pub shmmni: U64,
        pub shm_tot: U64,
        pub in_use: U32,
        pub max_idx: I32,
        pub rmid_forced: U32,
        pub next_id: I32,
        pub slot_hwm: U32,
        _pad: U32,
    }
}

pub const HEADER_SIZE: usize = 16384;
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

shared_struct! {
    /// One segment: the kernel's `struct shmid_kernel` as userspace sees it.
    /// Guarded by the registry lock, except `server_fd` (written by the server).
    #[derive(Default)]
    pub struct Slot {
        pub state: U32,
        /// F_HUGETLB | F_NORESERVE.
        pub flags: U32,
        /// `__key`; 0 after IPC_RMID of an attached segment (S94).
        pub key: I32,
        /// Permission bits | SHM_DEST | SHM_LOCKED (S80).
        pub mode: U32,
        pub uid: U32,
        pub gid: U32,
        pub cuid: U32,
        pub cgid: U32,
        pub seq: U32,
        pub cpid: I32,
        pub lpid: I32,
        /// The uid charged for SHM_LOCK while SHM_LOCKED is set (S108).
        pub lock_uid: U32,
        /// As requested (S25).
        pub segsz: U64,
        pub atime: I64,
        pub dtime: I64,
        pub ctime: I64,
        /// Derived from the records: live attach fragments (S72).
        pub nattch: U64,
        /// Unique per creation; ties descriptors and records to this incarnation.
        pub serial: U64,
        /// Bytes mapped by shmat: segsz rounded up to the (huge) page size.
        pub map_len: U64,
        /// ceil(segsz / 4096): what counts against shmall (S25, S47).
        pub pages: U64,
        /// Written by the server: (server_gen as u16) << 48 | (serial as u16) << 32 |
        /// the server's descriptor number holding this incarnation's memfd.
        pub server_fd: U64,
        /// Derived: head of this slot's record list.
        pub rec_head: U32,
        /// The creator's pid while it lives (shm_creator); 0 once it exited: the
        /// segment is an orphan, which shm_rmid_forced removes (S130).
        pub creator: I32,
        /// Inode of the memfd: validates every descriptor before it is mapped.
        pub ino: U64,
    }
}

shared_struct! {
    /// One participating process. Guarded by the registry lock.
    #[derive(Default)]
    pub struct ProcEntry {
        /// 0 when free. Primary data.
        pub pid: I32,
        /// Bumped at each claim: a death notice names (entry, gen), so a notice about a
        /// previous owner never detaches the current one.
        pub gen: U32,
        /// Derived: head of this process's record list.
        pub rec_head: U32,
        _pad: U32,
        /// The process's start time (clock ticks after boot, /proc/PID/stat field 22):
        /// with the pid it names one process, whatever pids the system reuses.
        pub start: U64,
    }
}

shared_struct! {
    /// Attach fragments of one process on one segment. Guarded by the registry lock.
    #[derive(Default)]
    pub struct Rec {
        /// Proc entry index + 1; 0 = free. Primary data.
        pub proc_: U32,
        pub slot: U32,
        pub serial: U64,
        /// Number of mapping fragments (S72). Primary data.
        pub count: U32,
        /// Derived: next record of the same process (or the free list).
        pub next_proc: U32,
        /// Derived: next record of the same slot.
        pub next_slot: U32,
        _pad: U32,
    }
}

impl Slot {
    /// Records that the server of generation `gen` holds incarnation `serial`'s
    /// memfd as its descriptor `fd`.
    pub fn set_server_fd(&self, gen: u64, serial: u64, fd: i32) {
        self.server_fd.set(((gen & 0xffff) << 48) | ((serial & 0xffff) << 32) | fd as u32 as u64);
    }

    /// The server's descriptor number for incarnation `serial`, if the slot names
    /// one of server generation `gen`.
    pub fn server_fd_of(&self, gen: u64, serial: u64) -> Option<i32> {
        let k = self.server_fd.get();
        (k != 0 && k >> 48 == gen & 0xffff && (k >> 32) & 0xffff == serial & 0xffff).then_some(k as u32 as i32)
    }

    pub fn is_used(&self) -> bool {
        self.state.get() == SLOT_USED
    }
}

pub const SLOTS_OFF: usize = HEADER_SIZE;
pub const INDEX_OFF: usize = SLOTS_OFF + MAX_SLOTS * std::mem::size_of::<Slot>();
pub const PROCS_OFF: usize = INDEX_OFF + INDEX_SIZE * 4;
pub const RECS_OFF: usize = PROCS_OFF + MAX_PROCS * std::mem::size_of::<ProcEntry>();
pub const PUB_SLOTS_OFF: usize = RECS_OFF + MAX_RECS * std::mem::size_of::<Rec>();
pub const PUB_INDEX_OFF: usize = PUB_SLOTS_OFF + MAX_SLOTS * std::mem::size_of::<Slot>();
pub const FILE_SIZE: usize = PUB_INDEX_OFF + INDEX_SIZE * 4;

pub fn make_id(seq: u32, idx: u32) -> i32 {
    ((seq << 15) | idx) as i32
}

pub fn id_idx(id: i32) -> usize {
    (id as u32 & 0x7fff) as usize
}

pub fn id_seq(id: i32) -> u32 {
    (id as u32) >> 15
}

fn key_hash(key: i32) -> usize {
    ((key as u32).wrapping_mul(0x9E37_79B9) >> 16) as usize & (INDEX_SIZE - 1)
}

/// Why a registry file was refused.
#[derive(Debug)]
pub enum OpenError {
    Io(PathBuf, Errno, &'static str),
    Foreign(PathBuf, String),
}

impl OpenError {
    /// The errno a SysV call reports when its namespace cannot be opened: resource
    /// shortages keep the kernel's errors (the call may work later), anything else
    /// means "no SysV IPC here".
    pub fn errno(&self) -> Errno {
        match self {
            OpenError::Io(_, Errno(e @ (libc::ENOSPC | libc::ENOMEM | libc::EDQUOT)), _) => Errno(if *e == libc::EDQUOT { libc::ENOSPC } else { *e }),
            OpenError::Io(_, Errno(libc::EMFILE | libc::ENFILE), _) => Errno(libc::ENFILE),
            _ => Errno(libc::ENOSYS),
        }
    }
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
    map: SharedMap,
    pub path: PathBuf,
    /// The descriptor the mapping came from.
    pub fd: OwnedFd,
    /// False for a read-only mapping (a client of a shared namespace).
    pub writable: bool,
}

fn path_c(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// An all-zero slot/entry/record, returned for reads beyond the allocated chunks.
static EMPTY_SLOT: Slot = Slot::ZERO;
static EMPTY_PROC: ProcEntry = ProcEntry::ZERO;
static EMPTY_REC: Rec = Rec::ZERO;

impl Registry {
    /// What changes whenever a segment goes or the memory of one is released
    /// (destroy_epoch, released_epoch): a creation that failed for want of ids or
    /// memory is worth retrying only if this moved.
    pub fn release_stamp(&self) -> (u64, u64) {
        let h = self.header();
        (h.destroy_epoch.atomic().load(Ordering::Acquire), h.released_epoch.atomic().load(Ordering::Acquire))
    }

    /// Whether the memory of every destroyed segment is free: the server has
    /// closed its descriptors up to `released_epoch`, and each destruction after
    /// that was emptied by a process that held its memfd.
    pub fn all_released(&self) -> bool {
        let h = self.header();
        self.emptied_between(h.released_epoch.atomic().load(Ordering::Acquire), h.destroy_epoch.atomic().load(Ordering::Acquire))
    }

    /// Whether every destruction numbered `from..to` is marked emptied (its memory
    /// free whoever holds a descriptor); false when the ring no longer holds them all.
    pub fn emptied_between(&self, from: u64, to: u64) -> bool {
        let h = self.header();
        if to.wrapping_sub(from) > DESTROYED_RING as u64 {
            return false;
        }
        (from..to).all(|e| {
            let i = e as usize % DESTROYED_RING;
            h.emptied[i].atomic().load(Ordering::Acquire) == h.destroyed[i].atomic().load(Ordering::Acquire)
        })
    }

    /// Opens the registry in `dir` read-write, creating it atomically if absent:
    /// the new file is built completely under a temporary name and then linked into
    /// place, so no process ever sees a half-initialised registry.
    pub fn open_or_create(dir: &Path, limits: Limits, shared: bool) -> Result<Registry, OpenError> {
        let path = dir.join("registry");
        let cpath = path_c(&path);
        for _ in 0..100 {
            match sys::open(&cpath, libc::O_RDWR | libc::O_CLOEXEC, 0) {
                Ok(fd) => return Self::map_existing(path, fd, true),
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(OpenError::Io(path, e, "open")),
            }
            let tmp = dir.join(format!(".registry.{}.{}", sys::getpid(), sys::gettid()));
            let ctmp = path_c(&tmp);
            let mode = if shared { 0o644 } else { 0o600 };
            let fd =
                sys::open(&ctmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, mode).map_err(|e| OpenError::Io(tmp.clone(), e, "create"))?;
            let built = Self::build(&fd, limits, shared).and_then(|_| map_fd(&fd, true)).map(|map| Registry { map, path: tmp.clone(), fd, writable: true });
            let reg = match built {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(OpenError::Io(tmp, e, "initialise"));
                }
            };
            let linked = sys::link(&ctmp, &cpath);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    let mut reg = reg;
                    reg.path = path;
                    return Ok(reg);
                }
                Err(Errno(libc::EEXIST)) => {} // somebody else won the race: use theirs
                Err(e) => return Err(OpenError::Io(path, e, "link")),
            }
        }
        Err(OpenError::Foreign(path, "could not be created or opened".into()))
    }

    /// Maps an already open registry descriptor (read-only for clients of a shared
    /// namespace).
    pub fn from_fd(path: PathBuf, fd: OwnedFd, writable: bool) -> Result<Registry, OpenError> {
        Self::map_existing(path, fd, writable)
    }

    /// Writes a new registry's header into `fd` (a file nobody else has opened yet)
    /// and allocates the header and the key index.
    fn build(fd: &OwnedFd, limits: Limits, shared: bool) -> SysResult<()> {
        sys::set_size(fd.as_raw_fd(), FILE_SIZE as u64)?;
        sys::fallocate(fd.as_raw_fd(), 0, 0, HEADER_SIZE as u64)?;
        sys::fallocate(fd.as_raw_fd(), 0, INDEX_OFF as u64, (INDEX_SIZE * 4) as u64)?;
        sys::fallocate(fd.as_raw_fd(), 0, PUB_INDEX_OFF as u64, (INDEX_SIZE * 4) as u64)?;
        let map = map_fd(fd, true)?;
        let reg = Registry { map, path: PathBuf::new(), fd: sys::dup(fd.as_raw_fd())?, writable: true };
        let h = reg.header();
        h.magic.set(MAGIC);
        h.version.set(LAYOUT_VERSION);
        h.slot_size.set(std::mem::size_of::<Slot>() as u32);
        h.proc_size.set(std::mem::size_of::<ProcEntry>() as u32);
        h.rec_size.set(std::mem::size_of::<Rec>() as u32);
        h.file_size.set(FILE_SIZE as u64);
        h.shared.set(shared as u32);
        // SAFETY: the mutexes lie in a file no other process has opened yet (its
        // name is this thread's own until it is linked into place), so nobody
        // else can touch them while they are initialised.
        unsafe { h.mutex.init() };
        // SAFETY: as above.
        unsafe { h.server_alive.init() };
        h.shmmax.set(limits.shmmax);
        h.shmall.set(limits.shmall);
        h.shmmni.set(limits.shmmni);
        h.last_idx.set(-1);
        h.max_idx.set(-1);
        h.next_serial.set(1);
        h.next_id.set(-1);
        h.rec_free.set(NIL);
        h.published.shmmax.set(limits.shmmax);
        h.published.shmall.set(limits.shmall);
        h.published.shmmni.set(limits.shmmni);
        h.published.max_idx.set(-1);
        h.published.next_id.set(-1);
        Ok(())
    }

    fn map_existing(path: PathBuf, fd: OwnedFd, writable: bool) -> Result<Registry, OpenError> {
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| OpenError::Io(path.clone(), e, "fstat"))?;
        if st.st_size as usize != FILE_SIZE {
            let why = if st.st_size < HEADER_SIZE as i64 {
                format!("is {} bytes, not a shmshim registry (expected {} bytes); remove it if no shmshim process uses this directory", st.st_size, FILE_SIZE)
            } else {
                format!("has size {} instead of {} (truncated, or from another shmshim version)", st.st_size, FILE_SIZE)
            };
            return Err(OpenError::Foreign(path, why));
        }
        let map = map_fd(&fd, writable).map_err(|e| OpenError::Io(path.clone(), e, "mmap"))?;
        let reg = Registry { map, path, fd, writable };
        reg.validate_header()?;
        Ok(reg)
    }

    fn validate_header(&self) -> Result<(), OpenError> {
        let h = self.header();
        if h.magic.get() != MAGIC {
            return Err(OpenError::Foreign(self.path.clone(), "bad magic: not a shmshim registry".into()));
        }
        if h.version.get() != LAYOUT_VERSION
            || h.slot_size.get() as usize != std::mem::size_of::<Slot>()
            || h.proc_size.get() as usize != std::mem::size_of::<ProcEntry>()
            || h.rec_size.get() as usize != std::mem::size_of::<Rec>()
            || h.file_size.get() as usize != FILE_SIZE
        {
            return Err(OpenError::Foreign(
                self.path.clone(),
                format!("layout version {} is not supported (this shmshim speaks version {})", h.version.get(), LAYOUT_VERSION),
            ));
        }
        Ok(())
    }

    /// Whether the file still looks like the registry it was (its size, magic and
    /// version): a server stops touching one that was truncated or overwritten.
    pub fn intact(&self) -> bool {
        let h = self.header();
        matches!(sys::fstat(self.fd.as_raw_fd()), Ok(st) if st.st_size as usize == FILE_SIZE) && h.magic.get() == MAGIC && h.version.get() == LAYOUT_VERSION
    }

    pub fn header(&self) -> &Header {
        self.map.view(0)
    }

    /// Called by the server once, at start: takes the liveness mutex, which it
    /// keeps until the process ends (a predecessor that died holding it hands it
    /// over). Dropping the guard gives it up, for a server that leaves by itself.
    pub fn hold_server_alive(&self) -> Locked<'_> {
        let (held, owner_died) = self.header().server_alive.lock();
        if owner_died {
            held.mark_consistent();
        }
        held
    }

    /// Whether a server holds the liveness mutex now: its owner field names a
    /// thread and the kernel has not marked the owner dead. One atomic load of the
    /// mutex's lock word.
    pub fn server_alive(&self) -> bool {
        let word = self.header().server_alive.futex_word();
        word & libc::FUTEX_TID_MASK != 0 && word & libc::FUTEX_OWNER_DIED == 0
    }

    /// Whether this is a shared (multi-user) namespace's registry.
    pub fn is_shared(&self) -> bool {
        self.header().shared.get() != 0
    }

    fn bound(have: &U32, max: usize) -> usize {
        (have.get() as usize).min(max)
    }

    /// Slot `i`; an all-zero (free) slot beyond the allocated chunks.
    pub fn slot(&self, i: usize) -> &Slot {
        if i >= Self::bound(&self.header().slots_backed, MAX_SLOTS) {
            return &EMPTY_SLOT;
        }
        self.map.element(SLOTS_OFF, i)
    }

    /// Proc entry `i`; an all-zero (free) entry beyond the allocated chunks.
    pub fn proc_entry(&self, i: usize) -> &ProcEntry {
        if i >= Self::bound(&self.header().procs_backed, MAX_PROCS) {
            return &EMPTY_PROC;
        }
        self.map.element(PROCS_OFF, i)
    }

    /// Record `i`; an all-zero (free) record beyond the allocated chunks.
    pub fn rec(&self, i: usize) -> &Rec {
        if i >= Self::bound(&self.header().recs_backed, MAX_RECS) {
            return &EMPTY_REC;
        }
        self.map.element(RECS_OFF, i)
    }

    fn index(&self, i: usize) -> &U32 {
        let i = i & (INDEX_SIZE - 1);
        self.map.element(INDEX_OFF, i)
    }

    /// The published copy of slot `i` (see the module comment); all-zero beyond
    /// the allocated chunks, which cover both copies.
    fn pub_slot(&self, i: usize) -> &Slot {
        if i >= Self::bound(&self.header().slots_backed, MAX_SLOTS) {
            return &EMPTY_SLOT;
        }
        self.map.element(PUB_SLOTS_OFF, i)
    }

    fn pub_index(&self, i: usize) -> &U32 {
        self.map.element(PUB_INDEX_OFF, i & (INDEX_SIZE - 1))
    }

    /// The live tables as a [`View`]: what a holder of the lock reads.
    pub fn live(&self) -> View<'_> {
        View { reg: self, published: false }
    }

    /// Takes the registry lock, repairing the registry if a holder died.
    pub fn lock(&self) -> RegGuard<'_> {
        self.acquire(|m| Some(m.lock())).expect("a blocking lock returns held")
    }

    /// Ends zero-fill `k` of segment `serial` (`RegGuard::fill_begin`): no lock
    /// needed, attachers look again under it.
    pub fn fill_end(&self, k: usize, serial: u64) {
        if let Some(f) = self.header().fills.get(k) {
            let _ = f.serial.compare_exchange(serial, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Whether an attach is waiting for zero-fill `k` of segment `serial` to end.
    pub fn fill_wanted(&self, k: usize, serial: u64) -> bool {
        self.header().fills.get(k).is_some_and(|f| f.serial.load(Ordering::Acquire) == serial && f.wanted.load(Ordering::Acquire) != 0)
    }

    /// Takes the lock for a participant's call, waiting at most `LOCK_TIMEOUT`: a
    /// holder that stopped (SIGSTOP, a debugger) makes the call fail with ENOMEM
    /// in bounded time instead of freezing it. Readers never wait (`read`).
    pub fn lock_bounded(&self) -> SysResult<RegGuard<'_>> {
        self.acquire(|m| m.lock_for(LOCK_TIMEOUT)).ok_or(Errno(libc::ENOMEM))
    }

    /// `lock_bounded` where this process may lock (not a shared namespace's
    /// client) and the lock was had in time.
    pub fn lock_if_writable(&self) -> Option<RegGuard<'_>> {
        self.writable.then(|| self.lock_bounded().ok()).flatten()
    }

    /// Takes the lock only if it is free.
    pub fn try_lock(&self) -> Option<RegGuard<'_>> {
        self.writable.then(|| self.acquire(|m| m.try_lock())).flatten()
    }

    /// Takes the lock with `take` (None: not taken), counted as held while it is
    /// taken (see fsmutex::note_held).
    fn acquire<'a>(&'a self, take: impl FnOnce(&'a RawMutex) -> Option<(Locked<'a>, bool)>) -> Option<RegGuard<'a>> {
        assert!(self.writable, "a read-only registry cannot be locked");
        crate::fsmutex::note_held(true);
        let Some((held, owner_died)) = take(&self.header().mutex) else {
            crate::fsmutex::note_held(false);
            return None;
        };
        Some(self.locked(held, owner_died))
    }

    fn locked<'a>(&'a self, held: Locked<'a>, owner_died: bool) -> RegGuard<'a> {
        let h = self.header();
        h.busy.set(h.busy.get() | 1);
        let mut g = RegGuard { reg: self, held: Some(held), marks: Marks::default(), index_marks: Marks::default() };
        if owner_died {
            let s = h.seq.get();
            if !s.is_multiple_of(2) {
                // The holder died copying its update into the published copy:
                // the live tables are complete, so the copy is finished first.
                g.marks.all.set(true);
                g.index_marks.all.set(true);
                // (Readers that see the copy's new bytes see `seq` move.)
                fence(Ordering::Release);
                g.copy_out();
                h.seq.atomic().store(s.wrapping_add(1), Ordering::Release);
            }
            fence(Ordering::Release);
            g.repair();
            g.marks.all.set(true);
            g.index_marks.all.set(true);
            // Every invariant is restored.
            if let Some(held) = &g.held {
                held.mark_consistent();
            }
        }
        // Readers that see what this holder writes see `seq` move (`read`).
        fence(Ordering::Release);
        g
    }

    /// Runs `f` on a consistent view without taking the lock: the published copy
    /// or the live tables, as `seq` says (see the module comment); retried only
    /// if `seq` moved meanwhile. `f` must tolerate torn data (all walks here are
    /// bounded). Gives up with EAGAIN after about a second of continuous updates.
    pub fn read<T>(&self, mut f: impl FnMut(View<'_>) -> T) -> SysResult<T> {
        optimistic(self.header().seq.atomic(), |s| Some(f(View { reg: self, published: s.is_multiple_of(2) })))
    }

    /// Waits until the update in progress, if any, is published, for at most
    /// `max`: a caller that wants what a running writer is about to publish (a
    /// death the server is applying), and that a stopped one delays only `max`.
    pub fn settle(&self, max: std::time::Duration) {
        let busy = self.header().busy.atomic();
        let b = busy.load(Ordering::Acquire);
        if b.is_multiple_of(2) {
            return;
        }
        let start = std::time::Instant::now();
        while busy.load(Ordering::Acquire) == b && start.elapsed() < max {
            std::thread::yield_now();
        }
    }

    /// Runs `f` on the live tables while no writer holds the lock, retried while
    /// one does or did meanwhile; EAGAIN after about a second (a holder that is
    /// stopped). For diagnostics of a registry this process may not lock.
    pub fn read_live<T>(&self, mut f: impl FnMut(&Registry) -> T) -> SysResult<T> {
        optimistic(self.header().busy.atomic(), |b| b.is_multiple_of(2).then(|| f(self)))
    }

    // ------------------------------------------------------------- lookups

    /// O(1) lookup of a live (non-DEST) segment by key, in the live tables.
    pub fn find_key(&self, key: i32) -> Option<usize> {
        self.live().find_key(key)
    }

    /// Resolves an id to its slot in the live tables (S13, S14).
    pub fn slot_of_id(&self, id: i32) -> Option<usize> {
        self.live().slot_of_id(id)
    }

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
        self.walk(self.proc_entry(p).rec_head.get(), |r| r.next_proc.get())
    }

    /// The records of `slot`.
    pub fn slot_recs(&self, slot: usize) -> impl Iterator<Item = u32> + '_ {
        self.walk(self.slot(slot).rec_head.get(), |r| r.next_slot.get())
    }

    /// Process `p`'s record for the current incarnation of `slot`.
    pub fn find_rec(&self, p: usize, slot: usize) -> Option<u32> {
        let serial = self.slot(slot).serial.get();
        self.proc_recs(p).find(|&r| {
            let rec = self.rec(r as usize);
            rec.slot.get() as usize == slot && rec.serial.get() == serial
        })
    }

    /// The number of fragments entry `p` has of `slot`'s current incarnation.
    pub fn rec_count(&self, p: usize, slot: usize) -> u32 {
        self.find_rec(p, slot).map(|r| self.rec(r as usize).count.get()).unwrap_or(0)
    }

    pub fn slot_hwm(&self) -> usize {
        Self::bound(&self.header().slot_hwm, MAX_SLOTS).min(Self::bound(&self.header().slots_backed, MAX_SLOTS))
    }

    pub fn proc_hwm(&self) -> usize {
        Self::bound(&self.header().proc_hwm, MAX_PROCS).min(Self::bound(&self.header().procs_backed, MAX_PROCS))
    }

    fn rec_hwm(&self) -> usize {
        Self::bound(&self.header().rec_hwm, MAX_RECS).min(Self::bound(&self.header().recs_backed, MAX_RECS))
    }

    /// Proc entries in use.
    pub fn used_procs(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.proc_hwm()).filter(|&p| self.proc_entry(p).pid.get() != 0)
    }

    /// The counters as the slots say they are: (in use, pages, highest used index).
    fn tally(&self) -> (u32, u64, i32) {
        let used = (0..self.slot_hwm()).filter(|&i| self.slot(i).is_used());
        used.fold((0, 0, -1), |(n, pages, _), i| (n + 1, pages + self.slot(i).pages.get(), i as i32))
    }

    /// Checks every invariant; used by tests and `shmshim check`.
    pub fn check_invariants(&self) -> Result<(), String> {
        let h = self.header();
        let (in_use, tot, max) = self.tally();
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if !s.is_used() {
                continue;
            }
            let key = s.key.get();
            if key != 0 && s.mode.get() & SHM_DEST == 0 && self.find_key(key) != Some(i) {
                return Err(format!("slot {i}: key {key} not indexed"));
            }
            let n: u64 = self.slot_recs(i).map(|r| self.rec(r as usize).count.get() as u64).sum();
            if n != s.nattch.get() {
                return Err(format!("slot {i}: nattch {} but records say {n}", s.nattch.get()));
            }
            if s.mode.get() & SHM_DEST != 0 && s.nattch.get() == 0 {
                return Err(format!("slot {i}: removed (SHM_DEST) with nattch 0 but not destroyed"));
            }
        }
        for r in 0..self.rec_hwm() {
            let rec = self.rec(r);
            let p = rec.proc_.get();
            if p != 0 && self.proc_entry(p as usize - 1).pid.get() == 0 {
                return Err(format!("record {r}: belongs to free proc entry {}", p - 1));
            }
        }
        if in_use != h.in_use.get() || tot != h.shm_tot.get() || max != h.max_idx.get() {
            return Err(format!("counters: in_use {}/{in_use} shm_tot {}/{tot} max_idx {}/{max}", h.in_use.get(), h.shm_tot.get(), h.max_idx.get()));
        }
        self.check_published()
    }

    /// Between updates, the published copy is the live tables (see the module
    /// comment): every field a reader without the lock uses.
    fn check_published(&self) -> Result<(), String> {
        let (live, published) = (self.live(), View { reg: self, published: true });
        let counters = |v: View| (v.shmmax(), v.shmall(), v.shmmni(), v.shm_tot(), v.in_use(), v.max_idx(), v.rmid_forced(), v.next_id(), v.slot_hwm());
        if counters(live) != counters(published) {
            return Err(format!("published counters {:?} differ from the live ones {:?}", counters(published), counters(live)));
        }
        let fields = |s: &Slot| {
            (
                [s.state.get(), s.flags.get(), s.key.get() as u32, s.mode.get(), s.uid.get(), s.gid.get(), s.cuid.get(), s.cgid.get(), s.seq.get()],
                [s.cpid.get(), s.lpid.get()],
                [
                    s.segsz.get(),
                    s.atime.get() as u64,
                    s.dtime.get() as u64,
                    s.ctime.get() as u64,
                    s.nattch.get(),
                    s.serial.get(),
                    s.map_len.get(),
                    s.pages.get(),
                    s.ino.get(),
                ],
            )
        };
        for i in 0..self.slot_hwm() {
            if fields(live.slot(i)) != fields(published.slot(i)) {
                return Err(format!("slot {i}: the published copy differs from the live slot"));
            }
        }
        for i in 0..INDEX_SIZE {
            if live.index(i).get() != published.index(i).get() {
                return Err(format!("key index cell {i}: the published copy differs"));
            }
        }
        Ok(())
    }
}

/// Runs `attempt` with the value of `counter` until it returns a result while
/// `counter` stayed the same (writers move it around what it guards); EAGAIN
/// after about a second of attempts.
fn optimistic<T>(counter: &AtomicU64, mut attempt: impl FnMut(u64) -> Option<T>) -> SysResult<T> {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    loop {
        let s1 = counter.load(Ordering::Acquire);
        if let Some(v) = attempt(s1) {
            fence(Ordering::Acquire);
            if counter.load(Ordering::Relaxed) == s1 {
                return Ok(v);
            }
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            if start.elapsed() > std::time::Duration::from_secs(1) {
                return Err(Errno(libc::EAGAIN));
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

/// What a caller reads: the live tables (a holder of the lock, [`Registry::live`])
/// or whichever copy [`Registry::read`] found trustworthy.
#[derive(Clone, Copy)]
pub struct View<'a> {
    reg: &'a Registry,
    /// The published copy (else the live tables).
    published: bool,
}

macro_rules! view_counters {
    ($($f:ident: $t:ty),*) => {$(
        #[doc = concat!("The header's `", stringify!($f), "` in this view.")]
        pub fn $f(&self) -> $t {
            let h = self.reg.header();
            if self.published { h.published.$f.get() } else { h.$f.get() }
        }
    )*};
}

impl<'a> View<'a> {
    view_counters!(shmmax: u64, shmall: u64, shmmni: u64, shm_tot: u64, in_use: u32, max_idx: i32, rmid_forced: u32, next_id: i32);

    /// The registry behind the view (for what only the live tables hold).
    pub fn registry(&self) -> &'a Registry {
        self.reg
    }

    pub fn slot(&self, i: usize) -> &'a Slot {
        if self.published {
            self.reg.pub_slot(i)
        } else {
            self.reg.slot(i)
        }
    }

    fn index(&self, i: usize) -> &'a U32 {
        if self.published {
            self.reg.pub_index(i)
        } else {
            self.reg.index(i)
        }
    }

    /// Slots at or above this were never used.
    pub fn slot_hwm(&self) -> usize {
        if self.published {
            let h = self.reg.header();
            Registry::bound(&h.published.slot_hwm, MAX_SLOTS).min(Registry::bound(&h.slots_backed, MAX_SLOTS))
        } else {
            self.reg.slot_hwm()
        }
    }

    /// O(1) lookup of a live (non-DEST) segment by key. Key 0 is never indexed (S18).
    pub fn find_key(&self, key: i32) -> Option<usize> {
        let mut h = key_hash(key);
        for _ in 0..INDEX_SIZE {
            let v = self.index(h).get();
            if v == 0 {
                return None;
            }
            let s = (v - 1) as usize;
            let sl = self.slot(s);
            if sl.is_used() && sl.key.get() == key && sl.mode.get() & SHM_DEST == 0 {
                return Some(s);
            }
            h = (h + 1) & (INDEX_SIZE - 1);
        }
        None
    }

    /// Resolves an id to its slot, checking idx and seq (S13, S14).
    pub fn slot_of_id(&self, id: i32) -> Option<usize> {
        if id < 0 {
            return None;
        }
        let idx = id_idx(id);
        let s = self.slot(idx);
        (s.is_used() && s.seq.get() == id_seq(id)).then_some(idx)
    }
}

fn map_fd(fd: &OwnedFd, writable: bool) -> SysResult<SharedMap> {
    SharedMap::map(fd.as_fd(), FILE_SIZE, writable)
}

/// Which entries of a table a holder of the lock may have changed: up to
/// `MARKS` of them, else all.
struct Marks {
    n: std::cell::Cell<usize>,
    ids: [std::cell::Cell<u32>; MARKS],
    all: std::cell::Cell<bool>,
}

impl Default for Marks {
    fn default() -> Self {
        Marks { n: Default::default(), ids: std::array::from_fn(|_| Default::default()), all: Default::default() }
    }
}

const MARKS: usize = 64;

impl Marks {
    fn mark(&self, i: usize) {
        let n = self.n.get();
        if self.all.get() || (n > 0 && self.ids[n - 1].get() == i as u32) || self.ids[..n].iter().any(|c| c.get() == i as u32) {
            return;
        }
        if n == MARKS {
            self.all.set(true);
            return;
        }
        self.ids[n].set(i as u32);
        self.n.set(n + 1);
    }

    fn clear(&self) {
        self.n.set(0);
        self.all.set(false);
    }

    fn any(&self) -> bool {
        self.all.get() || self.n.get() > 0
    }

    /// The marked entries below `limit` (every one if all are marked).
    fn each(&self, limit: usize, mut f: impl FnMut(usize)) {
        if self.all.get() {
            (0..limit).for_each(f);
        } else {
            self.ids[..self.n.get()].iter().map(|c| c.get() as usize).filter(|&i| i < limit).for_each(&mut f);
        }
    }
}

/// Proof of holding the registry lock; all mutation goes through it.
pub struct RegGuard<'a> {
    pub reg: &'a Registry,
    /// The mutex, held until the guard drops.
    held: Option<Locked<'a>>,
    /// Slots reached through `slot()`: the ones the update may have changed.
    marks: Marks,
    /// Key index cells written.
    index_marks: Marks,
}

impl Drop for RegGuard<'_> {
    fn drop(&mut self) {
        self.publish();
        let busy = &self.reg.header().busy;
        busy.atomic().store(busy.get().wrapping_add(1), Ordering::Release);
        drop(self.held.take());
        crate::fsmutex::note_held(false);
    }
}

impl<'a> std::ops::Deref for RegGuard<'a> {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        self.reg
    }
}

/// The file offset and element size of each growable region.
#[derive(Clone, Copy)]
enum Region {
    Slots,
    Procs,
    Recs,
}

impl Region {
    fn layout(self) -> (usize, usize, usize) {
        match self {
            Region::Slots => (SLOTS_OFF, std::mem::size_of::<Slot>(), MAX_SLOTS),
            Region::Procs => (PROCS_OFF, std::mem::size_of::<ProcEntry>(), MAX_PROCS),
            Region::Recs => (RECS_OFF, std::mem::size_of::<Rec>(), MAX_RECS),
        }
    }
}

/// The guard's two uses of the header fields that `Stats` publishes, from one
/// list of them.
macro_rules! published_counters {
    ($($f:ident),*) => {
        /// Whether a counter readers without the lock see differs from the live one.
        fn stats_differ(&self) -> bool {
            let (h, p) = (self.hdr(), &self.hdr().published);
            false $(|| p.$f.get() != h.$f.get())*
        }

        /// Copies the live counters into the published ones.
        fn copy_counters(&self) {
            let (h, p) = (self.hdr(), &self.hdr().published);
            $(p.$f.set(h.$f.get());)*
        }
    };
}

impl<'a> RegGuard<'a> {
    // The accessors borrow from the mapping ('a), not from the guard: they are
    // references to atomics, which may coexist with the guard's `&mut self` methods.

    pub fn hdr(&self) -> &'a Header {
        self.reg.header()
    }

    /// Slot `i`, marked as changed by this update (read-only walks use
    /// `self.reg.slot`).
    pub fn slot(&self, i: usize) -> &'a Slot {
        self.marks.mark(i);
        self.reg.slot(i)
    }

    fn set_index(&self, i: usize, v: u32) {
        let i = i & (INDEX_SIZE - 1);
        self.index_marks.mark(i);
        self.reg.index(i).set(v);
    }

    published_counters!(shmmax, shmall, shmmni, shm_tot, in_use, max_idx, rmid_forced, next_id, slot_hwm);

    /// Copies the marked slots and index cells and the counters from the live
    /// tables into the published copy.
    fn copy_out(&self) {
        let reg = self.reg;
        self.copy_counters();
        self.marks.each(reg.slot_hwm(), |i| reg.pub_slot(i).copy_from(reg.slot(i)));
        self.index_marks.each(INDEX_SIZE, |i| reg.pub_index(i).set(reg.index(i).get()));
    }

    /// Publishes this update (see the module comment): readers trust the live
    /// tables while `seq` is odd, the published copy again once it is even.
    fn publish(&self) {
        if !self.marks.any() && !self.index_marks.any() && !self.stats_differ() {
            return;
        }
        let seq = self.hdr().seq.atomic();
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Release);
        fence(Ordering::Release);
        self.copy_out();
        seq.store(s.wrapping_add(2), Ordering::Release);
        // Live writes after this (the guard goes on after a check) come after
        // the even `seq` for every reader.
        fence(Ordering::Release);
        self.marks.clear();
        self.index_marks.clear();
    }

    /// [`Registry::check_invariants`] once this update so far is published.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.publish();
        let r = self.reg.check_invariants();
        // Slots reached before the check may still be written: the next
        // publication copies them all.
        self.marks.all.set(true);
        self.index_marks.all.set(true);
        r
    }

    pub fn proc_entry(&self, i: usize) -> &'a ProcEntry {
        self.reg.proc_entry(i)
    }

    pub fn rec(&self, i: usize) -> &'a Rec {
        self.reg.rec(i)
    }

    /// Makes sure entries `0..=i` of `region` are allocated on the filesystem before
    /// they are touched (ENOSPC if the filesystem has no room).
    fn back(&mut self, region: Region, i: usize) -> SysResult<()> {
        let h = self.hdr();
        let have = match region {
            Region::Slots => &h.slots_backed,
            Region::Procs => &h.procs_backed,
            Region::Recs => &h.recs_backed,
        };
        if i < have.get() as usize {
            return Ok(());
        }
        let (off, size, max) = region.layout();
        let from = off + have.get() as usize * size;
        let to = (off + (i + 1) * size).div_ceil(CHUNK) * CHUNK;
        let to = to.min(off + max * size);
        let alloc = |from: usize, to: usize| {
            sys::fallocate(self.reg.fd.as_raw_fd(), 0, from as u64, (to - from) as u64).map_err(|e| match e.0 {
                libc::EOPNOTSUPP => Errno(libc::ENOSPC),
                libc::EDQUOT => Errno(libc::ENOSPC),
                _ => e,
            })
        };
        if let Region::Slots = region {
            // The published copies, before the live slots they copy.
            alloc(from - off + PUB_SLOTS_OFF, to - off + PUB_SLOTS_OFF)?;
        }
        alloc(from, to)?;
        // Entries that now lie entirely inside the allocated bytes; a partial one at
        // the end stays beyond the bound until the next chunk.
        have.set((((to - off) / size).min(max)) as u32);
        Ok(())
    }

    /// Allocates records and proc entries ahead of their use: a new segment's
    /// creation fails (ENOSPC) where the filesystem could not hold the attaches
    /// that follow it.
    pub fn reserve_headroom(&mut self) -> SysResult<()> {
        let h = self.hdr();
        self.back(Region::Recs, (h.rec_hwm.get() as usize + 64).min(MAX_RECS - 1))?;
        self.back(Region::Procs, (h.proc_hwm.get() as usize + 16).min(MAX_PROCS - 1))
    }

    // ------------------------------------------------------------- key index

    pub fn index_insert(&mut self, key: i32, slot: usize) {
        let mut h = key_hash(key);
        for _ in 0..INDEX_SIZE {
            if self.index(h).get() == 0 {
                self.set_index(h, slot as u32 + 1);
                return;
            }
            h = (h + 1) & (INDEX_SIZE - 1);
        }
    }

    /// Removes `slot` from the index (backward-shift deletion keeps probes short).
    pub fn index_remove(&mut self, key: i32, slot: usize) {
        let mut h = key_hash(key);
        let mut found = false;
        for _ in 0..INDEX_SIZE {
            let v = self.index(h).get();
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
            let v = self.index(j).get();
            if v == 0 || (v - 1) as usize >= MAX_SLOTS {
                break;
            }
            let home = key_hash(self.reg.slot((v - 1) as usize).key.get());
            // Can the entry at j move into the hole? Only if its home is not in (hole, j].
            let dist_hole = hole.wrapping_sub(home) & (INDEX_SIZE - 1);
            let dist_j = j.wrapping_sub(home) & (INDEX_SIZE - 1);
            if dist_hole < dist_j {
                self.set_index(hole, v);
                hole = j;
            }
        }
        self.set_index(hole, 0);
    }

    // ------------------------------------------------------------- ids

    /// Allocates an index like the kernel's ipc_idr_alloc (S10, S11) and returns
    /// (idx, seq); its slot is allocated on the filesystem. The caller has checked
    /// in_use < shmmni.
    pub fn alloc_idx(&mut self) -> SysResult<(usize, u32)> {
        let h = self.hdr();
        let window = (h.in_use.get() * 3 / 2).max(IPC_MIN_CYCLE).min(MAX_SLOTS as u32) as usize;
        let free_from = |start: usize| (start..window).find(|&i| !self.reg.slot(i).is_used());
        let start = h.idr_next.get() as usize;
        let idx = free_from(start).or_else(|| if start > 0 { free_from(0) } else { None }).ok_or(Errno(libc::ENOSPC))?;
        self.back(Region::Slots, idx)?;
        h.idr_next.set(idx as u32 + 1);
        h.slot_hwm.set(h.slot_hwm.get().max(idx as u32 + 1));
        if idx as i32 <= h.last_idx.get() {
            let mut seq = h.idr_seq.get() + 1;
            if seq >= SEQ_MAX {
                seq = 0;
            }
            h.idr_seq.set(seq);
        }
        h.last_idx.set(idx as i32);
        Ok((idx, h.idr_seq.get()))
    }

    /// Allocates the first free index at or above `start` with sequence `seq`, as
    /// the kernel does for an id written to shm_next_id (S19): the cyclic
    /// allocator's state is left alone.
    pub fn alloc_idx_at(&mut self, start: usize, seq: u32) -> SysResult<(usize, u32)> {
        let idx = (start..MAX_SLOTS).find(|&i| !self.reg.slot(i).is_used()).ok_or(Errno(libc::ENOSPC))?;
        self.back(Region::Slots, idx)?;
        let h = self.hdr();
        h.slot_hwm.set(h.slot_hwm.get().max(idx as u32 + 1));
        Ok((idx, seq))
    }

    // ------------------------------------------------------------- records

    /// Adds `n` fragments of `slot` to process entry `p` (ENOMEM when the record
    /// table is full, ENOSPC when the filesystem is).
    pub fn rec_add(&mut self, p: usize, slot: usize, n: u32) -> SysResult<()> {
        if let Some(r) = self.find_rec(p, slot) {
            self.rec(r as usize).count.add(n);
            self.slot(slot).nattch.add(n as u64);
            return Ok(());
        }
        let serial = self.slot(slot).serial.get();
        let h = self.hdr();
        let free = h.rec_free.get();
        let r = if free != NIL && (free as usize) < self.rec_hwm() {
            h.rec_free.set(self.rec(free as usize).next_proc.get());
            free
        } else if (h.rec_hwm.get() as usize) < MAX_RECS {
            let r = h.rec_hwm.get();
            self.back(Region::Recs, r as usize)?;
            h.rec_hwm.set(r + 1);
            r
        } else {
            return Err(Errno(libc::ENOMEM));
        };
        let rec = self.rec(r as usize);
        rec.slot.set(slot as u32);
        rec.serial.set(serial);
        rec.count.set(n);
        rec.next_proc.set(self.proc_entry(p).rec_head.get());
        rec.next_slot.set(self.slot(slot).rec_head.get());
        rec.proc_.set(p as u32 + 1); // primary: the record counts from here on
        self.proc_entry(p).rec_head.set(r);
        self.slot(slot).rec_head.set(r);
        self.slot(slot).nattch.add(n as u64);
        Ok(())
    }

    /// Removes `n` fragments of `slot` from process entry `p`.
    pub fn rec_sub(&mut self, p: usize, slot: usize, n: u32) {
        if let Some(r) = self.find_rec(p, slot) {
            let rec = self.rec(r as usize);
            let n = n.min(rec.count.get());
            rec.count.sub(n);
            self.slot(slot).nattch.sub(n as u64);
            if rec.count.get() == 0 {
                self.rec_free(r);
            }
        }
    }

    /// Unlinks record `r` from both lists and frees it.
    fn rec_free(&mut self, r: u32) {
        let rec = self.rec(r as usize);
        let p = rec.proc_.get() as usize - 1;
        let slot = rec.slot.get() as usize;
        rec.proc_.set(0); // primary: the record no longer counts
        self.unlink(&self.proc_entry(p).rec_head, r, |x| &x.next_proc);
        self.unlink(&self.slot(slot).rec_head, r, |x| &x.next_slot);
        let h = self.hdr();
        self.rec(r as usize).next_proc.set(h.rec_free.get());
        h.rec_free.set(r);
    }

    fn unlink(&self, head: &U32, r: u32, next: fn(&Rec) -> &U32) {
        let mut cur = head;
        for _ in 0..MAX_RECS {
            let v = cur.get();
            if v == NIL || v as usize >= MAX_RECS {
                return;
            }
            if v == r {
                cur.set(next(self.rec(r as usize)).get());
                return;
            }
            cur = next(self.rec(v as usize));
        }
    }

    /// Drops every record of process entry `p` (it died or exec'd) and frees the
    /// entry: each fragment is detached as exit would (S120–S123). Returns the slots
    /// touched.
    pub fn reap_proc(&mut self, p: usize, now: i64) -> Vec<usize> {
        let pid = self.proc_entry(p).pid.get();
        let mut touched = Vec::new();
        let mut steps = 0;
        while self.proc_entry(p).rec_head.get() != NIL && steps <= MAX_RECS {
            steps += 1;
            let r = self.proc_entry(p).rec_head.get();
            if r as usize >= self.rec_hwm() || self.rec(r as usize).proc_.get() as usize != p + 1 {
                // A list that does not hold up: rebuild it from the records.
                self.rebuild_lists();
                continue;
            }
            let rec = self.rec(r as usize);
            let slot = rec.slot.get() as usize;
            let s = self.slot(slot);
            s.nattch.set(s.nattch.get().saturating_sub(rec.count.get() as u64));
            s.dtime.set(now);
            s.lpid.set(pid);
            self.rec_free(r);
            touched.push(slot);
        }
        self.proc_entry(p).pid.set(0);
        self.proc_entry(p).rec_head.set(NIL);
        touched
    }

    /// Claims a free proc entry for process `pid` (started at `start`) and returns
    /// (entry, gen). ENOSPC when the table or the filesystem is full.
    pub fn claim_proc(&mut self, pid: i32, start: u64) -> SysResult<(usize, u32)> {
        let h = self.hdr();
        let hwm = self.proc_hwm();
        let hint = h.proc_hint.get() as usize;
        let found = (0..hwm).map(|k| (hint + k) % hwm.max(1)).find(|&p| p < hwm && self.proc_entry(p).pid.get() == 0);
        let p = match found {
            Some(p) => p,
            None if (h.proc_hwm.get() as usize) < MAX_PROCS => {
                let p = h.proc_hwm.get() as usize;
                self.back(Region::Procs, p)?;
                let e = self.proc_entry(p);
                e.pid.set(0);
                e.rec_head.set(NIL);
                h.proc_hwm.set(p as u32 + 1);
                p
            }
            None => return Err(Errno(libc::ENOSPC)),
        };
        let e = self.proc_entry(p);
        // Records a previous owner left (a repair can resurrect them) go first.
        if e.rec_head.get() != NIL {
            self.reap_proc(p, sys::now());
        }
        let gen = e.gen.get().wrapping_add(1);
        e.gen.set(gen);
        e.start.set(start);
        e.rec_head.set(NIL);
        e.pid.set(pid); // primary: in use from here on
        h.proc_hint.set(((p + 1) % MAX_PROCS) as u32);
        Ok((p, gen))
    }

    // ------------------------------------------------------------- repair

    /// Rebuilds every derived structure from primary data. Idempotent, so a holder
    /// that dies while repairing is repaired after in turn.
    pub fn repair(&mut self) {
        let h = self.hdr();
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.state.get() != SLOT_USED {
                s.state.set(SLOT_FREE);
            }
        }
        h.rec_free.set(NIL);
        self.rebuild_lists();
        // A holder killed between the last detach of a removed segment and its
        // destruction (S75) leaves it SHM_DEST with nattch 0: finish the job.
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            if s.is_used() && s.mode.get() & SHM_DEST != 0 && s.nattch.get() == 0 {
                s.state.set(SLOT_FREE);
                self.record_destroyed(s.serial.get(), false);
            }
        }
        for i in 0..INDEX_SIZE {
            // Only non-empty buckets are written.
            if self.index(i).get() != 0 {
                self.set_index(i, 0);
            }
        }
        for i in 0..self.slot_hwm() {
            let s = self.slot(i);
            let key = s.key.get();
            if s.is_used() && key != 0 && s.mode.get() & SHM_DEST == 0 {
                self.index_insert(key, i);
            }
        }
        let (in_use, tot, max) = self.tally();
        h.in_use.set(in_use);
        h.shm_tot.set(tot);
        h.max_idx.set(max);
    }

    /// Rebuilds record lists, the free list and every nattch from the records.
    fn rebuild_lists(&mut self) {
        for i in 0..self.slot_hwm() {
            self.slot(i).rec_head.set(NIL);
            self.slot(i).nattch.set(0);
        }
        for p in 0..self.proc_hwm() {
            self.proc_entry(p).rec_head.set(NIL);
        }
        let h = self.hdr();
        h.rec_free.set(NIL);
        for r in (0..self.rec_hwm()).rev() {
            let rec = self.rec(r);
            let (p1, s) = (rec.proc_.get() as usize, rec.slot.get() as usize);
            let valid = p1 != 0
                && p1 <= self.proc_hwm()
                && self.proc_entry(p1 - 1).pid.get() != 0
                && s < self.slot_hwm()
                && rec.count.get() > 0
                && self.slot(s).is_used()
                && self.slot(s).serial.get() == rec.serial.get();
            if !valid {
                rec.proc_.set(0);
                rec.next_proc.set(h.rec_free.get());
                h.rec_free.set(r as u32);
                continue;
            }
            let e = self.proc_entry(p1 - 1);
            rec.next_proc.set(e.rec_head.get());
            e.rec_head.set(r as u32);
            rec.next_slot.set(self.slot(s).rec_head.get());
            self.slot(s).rec_head.set(r as u32);
            self.slot(s).nattch.add(rec.count.get() as u64);
        }
    }

    /// Whether the process of fill entry `f` is gone: its proc entry was freed or
    /// claimed by another process since.
    fn fill_stale(&self, f: &FillEntry) -> bool {
        let i = f.entry.get() as usize;
        i >= MAX_PROCS || self.proc_entry(i).pid.get() == 0 || self.proc_entry(i).gen.get() != f.gen.get()
    }

    /// Claims a fill entry for segment `serial` by proc entry `me`; freed entries
    /// of processes that are gone are reused. None if all are taken.
    pub fn fill_begin(&mut self, serial: u64, me: usize) -> Option<usize> {
        let fills = &self.hdr().fills;
        let k = fills.iter().position(|f| f.serial.load(Ordering::Acquire) == 0 || self.fill_stale(f))?;
        let f = &fills[k];
        f.entry.set(me as u32);
        f.gen.set(self.proc_entry(me).gen.get());
        f.wanted.store(0, Ordering::Release);
        f.serial.store(serial, Ordering::Release);
        Some(k)
    }

    /// Whether a live process is zero-filling segment `serial` (entries of
    /// processes that are gone are freed on the way).
    pub fn filling(&mut self, serial: u64) -> bool {
        if serial == 0 {
            return false;
        }
        let mut busy = false;
        for f in self.hdr().fills.iter().filter(|f| f.serial.load(Ordering::Acquire) == serial) {
            if self.fill_stale(f) {
                f.serial.store(0, Ordering::Release);
            } else {
                f.wanted.store(1, Ordering::Release);
                busy = true;
            }
        }
        busy
    }

    /// Appends a destroyed segment to the header's ring and bumps destroy_epoch, so
    /// processes and the server drop their descriptors of it.
    ///
    /// `memoryless`: the segment never had a page (it was never attached), so its
    /// memory counts as released at once (`emptied`), with nothing to wait for.
    pub fn record_destroyed(&mut self, serial: u64, memoryless: bool) {
        let h = self.hdr();
        let e = h.destroy_epoch.atomic().load(Ordering::Acquire);
        h.destroyed[e as usize % DESTROYED_RING].atomic().store(serial, Ordering::Release);
        if memoryless {
            h.emptied[e as usize % DESTROYED_RING].atomic().store(serial, Ordering::Release);
        }
        h.destroy_epoch.atomic().store(e + 1, Ordering::Release);
    }

    /// Recomputes max_idx after a slot was freed.
    pub fn recompute_max_idx(&mut self) {
        let h = self.hdr();
        let mut m = h.max_idx.get();
        while m >= 0 && !self.reg.slot(m as usize).is_used() {
            m -= 1;
        }
        h.max_idx.set(m);
    }

    /// Sets limits (like writing the sysctls).
    pub fn set_limits(&mut self, shmmax: Option<u64>, shmall: Option<u64>, shmmni: Option<u64>) {
        let h = self.hdr();
        if let Some(v) = shmmax {
            h.shmmax.set(v);
        }
        if let Some(v) = shmall {
            h.shmall.set(v);
        }
        if let Some(v) = shmmni {
            h.shmmni.set(v.min(MAX_SLOTS as u64));
        }
    }
}
