//! Per-process state: this process's attaches (as mapping fragments, S71–S74), its
//! cache of segment descriptors, its proc entry and its connection to the server.
//!
//! `LOCAL` is taken before the registry lock, never after (see `registry`).

use crate::fsmutex::FsMutex;
use crate::registry::Registry;
use crate::sys::{self, Errno, SysResult};
use std::cell::Cell;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use crate::sys::PAGE;

/// Cached segment descriptors kept below the soft RLIMIT_NOFILE, where they use
/// the program's own budget of descriptors: a sixteenth of the soft limit (an
/// eighth of a small one), at most FD_CACHE_MAX (see `FdCache::budget`).
pub const FD_CACHE_MAX: u64 = 4096;
/// Cached segment descriptors kept above the soft limit (where the hard limit
/// leaves room), so that a process going round many segments maps each without
/// reopening it, at no cost to the descriptors the program may open itself.
pub const FD_CACHE_ABOVE: u64 = 16384;
/// When the cache is full, one miss in this many replaces a cached descriptor
/// picked at random (the others use their descriptor for one attach): the cache
/// follows a working set that moves, at little cost to one that is too large.
const FD_REPLACE_EVERY: u32 = 8;

pub use crate::frags::{Frag, FL_DONTDUMP, FL_DONTFORK};

/// One shmat: the kernel's per-attach `struct file`.
#[derive(Clone, Debug)]
pub struct Attach {
    pub slot: usize,
    pub serial: u64,
    /// PAGE_ALIGN(segsz) (or the huge-page-rounded length): bounds shmdt's search.
    pub map_len: usize,
    pub frags: Vec<Frag>,
}

impl Attach {
    /// Fragments a fork child inherits (all but MADV_DONTFORK ones, S124).
    pub fn inherited(&self) -> u32 {
        self.frags.iter().filter(|f| !f.dontfork()).count() as u32
    }
}

/// A descriptor this process holds at a number it chose; checked by inode before
/// each use and before it is closed (a program that closes descriptors it did not
/// open may have reused the number).
#[derive(Debug)]
pub struct HeldFd {
    pub fd: RawFd,
    pub ino: u64,
}

impl HeldFd {
    pub fn new(fd: OwnedFd) -> SysResult<HeldFd> {
        let fd = beyond_limit_fd(fd);
        let ino = sys::fstat(fd.as_raw_fd())?.st_ino;
        Ok(HeldFd { fd: fd.into_raw_fd(), ino })
    }

    /// Whether the number still holds our file.
    pub fn intact(&self) -> bool {
        matches!(sys::fstat(self.fd), Ok(st) if st.st_ino == self.ino)
    }

    /// Forgets the number without closing it (it may be the program's now).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        if self.intact() {
            sys::close(self.fd);
        }
    }
}

/// The file offset every open file of a segment's memfd is given once the memfd
/// has its size (by the server when it makes and sizes the memfd, by the process
/// that sizes a pooled one, by a process for a file it opened itself): from the
/// inode number, in [2^50, 2^51). Nothing reads or writes a memfd at its offset,
/// so the offset stays; `lseek(fd, 0, SEEK_CUR)` returning it tells, without an
/// fstat, that a cached number still holds the segment's file and not one the
/// program put there (a program's own file would have to sit at this offset).
pub fn fd_tag(ino: u64) -> i64 {
    let mut x = ino ^ 0x5348_4d53_4849_4d00;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((1u64 << 50) | (x >> 14)) as i64
}

/// Gives an open file of the memfd with inode `ino` its tag offset (see
/// `fd_tag`), unless it has it. Only a memfd sized for its segment is tagged
/// (a pooled memfd gets its tag from the process that sizes it), so a tag also
/// says the file is long enough to map.
pub fn tag_fd(fd: RawFd, ino: u64) {
    if !has_tag(fd, ino) {
        set_tag(fd, ino);
    }
}

/// `tag_fd` for a file known to lack the tag (just made or just sized).
pub fn set_tag(fd: RawFd, ino: u64) {
    let _ = sys::lseek(fd, fd_tag(ino), libc::SEEK_SET);
}

pub fn has_tag(fd: RawFd, ino: u64) -> bool {
    sys::lseek(fd, 0, libc::SEEK_CUR) == Ok(fd_tag(ino))
}

/// A cached descriptor of a segment (read-write, and a read-only reopen once needed).
pub struct CachedFd {
    pub slot: usize,
    pub ino: u64,
    /// The memfd's device: with `ino`, what makes sure a number is still ours
    /// before it is emptied (a program's file elsewhere may share the inode number).
    pub dev: u64,
    pub rw: RawFd,
    pub ro: Option<RawFd>,
    /// At or above the soft RLIMIT_NOFILE (see FD_CACHE_ABOVE).
    pub above: bool,
    /// The file is known to be at least this long (a segment's size never changes).
    pub len: u64,
}

impl CachedFd {
    /// `fd`'s status if the number still names the segment's memfd (device and
    /// inode): a program that closes descriptors it did not open may have reused it.
    fn ours(&self, fd: RawFd) -> Option<libc::stat> {
        sys::fstat(fd).ok().filter(|st| st.st_ino == self.ino && st.st_dev == self.dev)
    }

    /// Whether `fd` still names the segment's memfd, by its tag offset (one cheap
    /// lseek), else by fstat (then tagged again: the program may have put another
    /// open file of the same memfd there).
    fn still_ours(&self, fd: RawFd) -> bool {
        has_tag(fd, self.ino) || self.ours(fd).map(|_| set_tag(fd, self.ino)).is_some()
    }

    /// Frees the memory of a destroyed segment now, as the kernel does when it
    /// destroys one: the memfd is truncated to nothing, whoever else still holds a
    /// descriptor of it (the server always does). A destroyed segment has no
    /// attach left anywhere, so no mapping loses pages (S75). False if the
    /// descriptor is no longer ours.
    fn empty(&self) -> bool {
        self.ours(self.rw).is_some() && sys::ftruncate(self.rw, 0).is_ok()
    }
}

impl Drop for CachedFd {
    fn drop(&mut self) {
        for fd in std::iter::once(self.rw).chain(self.ro) {
            if self.ours(fd).is_some() {
                sys::close(fd);
            }
        }
    }
}

/// The process's cached segment descriptors by serial, with the count of those
/// below the soft RLIMIT_NOFILE (kept as entries come and go, so a miss does not
/// count them).
pub struct FdCache {
    map: std::collections::BTreeMap<u64, CachedFd>,
    below: usize,
    /// (soft RLIMIT_NOFILE, when read): read again after a second.
    soft: (u64, i64),
    /// Xorshift state for picking what a full cache replaces.
    rand: u32,
}

impl FdCache {
    pub const fn new() -> FdCache {
        FdCache { map: std::collections::BTreeMap::new(), below: 0, soft: (0, i64::MIN), rand: 0x9e37_79b9 }
    }

    pub fn get(&self, serial: &u64) -> Option<&CachedFd> {
        self.map.get(serial)
    }

    pub fn get_mut(&mut self, serial: &u64) -> Option<&mut CachedFd> {
        self.map.get_mut(serial)
    }

    /// Drops (and closes, if still ours) the entry of `serial`.
    pub fn remove(&mut self, serial: &u64) -> Option<CachedFd> {
        let c = self.map.remove(serial)?;
        self.below -= usize::from(!c.above);
        Some(c)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &CachedFd) -> bool) {
        let mut below = 0;
        self.map.retain(|k, c| {
            let kept = keep(k, c);
            below += usize::from(kept && !c.above);
            kept
        });
        self.below = below;
    }

    fn insert(&mut self, serial: u64, c: CachedFd) {
        self.below += usize::from(!c.above);
        if let Some(old) = self.map.insert(serial, c) {
            self.below -= usize::from(!old.above);
        }
    }

    /// How many descriptors may be cached below the soft limit `soft`: a
    /// sixteenth of it, an eighth of a limit up to 256 (32 there), at most
    /// FD_CACHE_MAX. A program near its limit loses no more than that to us.
    pub fn budget(soft: u64) -> usize {
        if soft == libc::RLIM_INFINITY {
            return FD_CACHE_MAX as usize;
        }
        (soft / 16).max(soft.min(256) / 8).min(FD_CACHE_MAX) as usize
    }

    /// Whether another descriptor fits below the soft limit (read at most once
    /// a second).
    fn room_below(&mut self) -> bool {
        let now = sys::now();
        if self.soft.1 != now {
            self.soft = (sys::rlimit_nofile().0, now);
        }
        self.below < Self::budget(self.soft.0)
    }

    /// One miss in FD_REPLACE_EVERY: drops a cached descriptor below the soft
    /// limit picked at random, making room for another. False otherwise.
    fn replace_one(&mut self) -> bool {
        let mut x = self.rand;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rand = x;
        if !x.is_multiple_of(FD_REPLACE_EVERY) || self.below == 0 {
            return false;
        }
        let (Some((&lo, _)), Some((&hi, _))) = (self.map.first_key_value(), self.map.last_key_value()) else { return false };
        let from = lo + u64::from(x >> 3) % (hi - lo + 1);
        let victim = self.map.range(from..).chain(self.map.range(..from)).find(|(_, c)| !c.above).map(|(&k, _)| k);
        victim.map(|k| self.remove(&k)).is_some()
    }
}

impl Default for FdCache {
    fn default() -> FdCache {
        FdCache::new()
    }
}

/// This process's connection to its namespace's server. The server learns of the
/// process's exit, exec (the descriptors are close-on-exec) or death when the
/// connection closes.
pub struct Conn {
    pub sock: HeldFd,
    /// The server's shared epoll instance: ready events are deaths not yet applied.
    pub ep: RawFd,
    /// Read end of the server's death pipe (registered in `ep`).
    pub death: RawFd,
    /// The server generation that answered our HELLO.
    pub server_gen: u64,
    /// The server's pid as this process sees it (0: in another pid namespace,
    /// so its /proc entry is out of reach).
    pub server_pid: i32,
    /// A pidfd of the server, for pidfd_getfd (None: none could be opened).
    pub server_pidfd: Option<HeldFd>,
}

impl Conn {
    /// A duplicate of the server's descriptor `n`: by pidfd_getfd, else through
    /// /proc/SERVER/fd (both need the server's uid). The caller checks the inode:
    /// the number may name another file by now, and our pidfd's number may have
    /// been replaced by the program with a pidfd of another process.
    pub fn server_fd(&self, n: RawFd) -> Option<OwnedFd> {
        if let Some(p) = &self.server_pidfd {
            if let Ok(fd) = sys::pidfd_getfd(p.fd, n) {
                return Some(fd);
            }
        }
        if self.server_pid <= 0 {
            return None;
        }
        let path = format!("/proc/{}/fd/{n}", self.server_pid);
        sys::open(&sys::cstr(std::path::Path::new(&path)), libc::O_RDWR | libc::O_CLOEXEC, 0).ok()
    }
}

#[derive(Default)]
pub struct Local {
    /// Our proc-table entry and its generation, once the server registered us.
    pub me: Option<(usize, u32)>,
    pub conn: Option<Conn>,
    /// A connection whose HELLO is not answered yet.
    pub pending: Option<HeldFd>,
    pub attaches: Vec<Attach>,
    /// Cached descriptors by segment serial.
    pub fds: FdCache,
    /// Last registry destroy_epoch this process swept its cache at.
    pub epoch: u64,
    /// The pid `me` was registered for: a child made by a raw fork/clone (no hook
    /// ran) notices it is not that process and registers anew.
    pub pid: i32,
    /// VMA changes of `me` not booked yet, because a holder of the registry lock
    /// kept it too long: (slot, serial, opens, closes), booked at the next call
    /// that gets the lock (or dropped with the registration, whose death the
    /// server applies).
    pub unbooked: Vec<(usize, u64, u32, u32)>,
}

/// This process's state. A fork-safe mutex: `fork` holds it across the real fork
/// while other threads may be waiting for it.
pub static LOCAL: FsMutex<Local> =
    FsMutex::new(Local { me: None, conn: None, pending: None, attaches: Vec::new(), fds: FdCache::new(), epoch: 0, pid: 0, unbooked: Vec::new() });

/// The shared epoll descriptor (-1: not connected), readable without LOCAL.
pub static EPFD: AtomicI32 = AtomicI32::new(-1);
/// This process's connection to the server (-1: none), for wake-ups sent without LOCAL.
pub static SOCKFD: AtomicI32 = AtomicI32::new(-1);
/// The inode of the connection at `SOCKFD`, to tell it from a number the program reused.
pub static SOCKINO: AtomicU64 = AtomicU64::new(0);
/// The server-death pipe's read end (-1: not connected), readable without LOCAL.
pub static DEATHFD: AtomicI32 = AtomicI32::new(-1);

/// Cleared by the kernel in every fork child (see `sys::ForkToken`).
static FORK_TOKEN: sys::ForkToken = sys::ForkToken::new();

/// Whether this is the process `pid` (`Local::pid`) names: one load, or getpid
/// where the kernel has no MADV_WIPEONFORK or before `mark_process` ran.
pub fn same_process(pid: i32) -> bool {
    FORK_TOKEN.armed() || sys::getpid() == pid
}

/// Records that `Local::pid` now names this process.
pub fn mark_process() {
    FORK_TOKEN.arm();
}

/// Number of fragments this process has: lets the munmap/mprotect hooks return at
/// once in processes without attaches.
pub static NFRAGS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while this thread runs shim code, so hooks it triggers pass straight through.
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside the shim for the guard's lifetime.
pub struct Reentry(bool);

impl Reentry {
    pub fn enter() -> Reentry {
        Reentry(IN_SHIM.with(|c| c.replace(true)))
    }
    pub fn active() -> bool {
        IN_SHIM.with(|c| c.get())
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        let prev = self.0;
        IN_SHIM.with(|c| c.set(prev));
    }
}

/// The namespace as this process opened it.
pub struct Namespace {
    pub reg: Registry,
    pub dir: std::path::PathBuf,
}

static NAMESPACE: OnceLock<Namespace> = OnceLock::new();
static OPENING: FsMutex<()> = FsMutex::new(());

/// The default namespace directory lives in world-writable places (/dev/shm,
/// /tmp): it must be ours and writable by nobody else, or another user could
/// have planted a registry and server there and would receive our memfds.
fn check_default_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("namespace directory {}: {e}", dir.display()))?;
    let euid = sys::geteuid();
    if !md.is_dir() || md.uid() != euid || md.mode() & 0o022 != 0 {
        return Err(format!(
            "namespace directory {} is not a directory owned by uid {euid} and writable only by it (owner uid {}, mode {:o}); refusing it: remove it, or set SHMSHIM_DIR to a directory you own",
            dir.display(),
            md.uid(),
            md.mode() & 0o7777
        ));
    }
    Ok(())
}

fn make_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(format!("namespace directory {}: {}", dir.display(), e)),
    }
}

/// Why the namespace could not be opened: a message (printed once) and the errno
/// calls report. Resource shortages are retried at the next call.
struct OpenFailure {
    msg: String,
    errno: Errno,
}

fn open_namespace() -> Result<Namespace, OpenFailure> {
    let cfg = crate::config::get();
    let dir = cfg.dir.clone();
    let fail = |msg: String| OpenFailure { msg, errno: Errno(libc::ENOSYS) };
    // A shared namespace is created by its server; clients only open it.
    let path = dir.join("registry");
    if let Ok(fd) = sys::open(&crate::sys::cstr(&path), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        let ro = Registry::from_fd(path.clone(), fd, false).map_err(|e| OpenFailure { errno: e.errno(), msg: e.to_string() })?;
        if ro.is_shared() {
            return Ok(Namespace { reg: ro, dir });
        }
    }
    if cfg.shared {
        return Err(fail(format!(
            "SHMSHIM_SHARED=1 but no shared namespace is served in {}: start one with `shmshim serve --dir {} --shared` (as root or a dedicated account), then point clients at it with SHMSHIM_DIR",
            dir.display(),
            dir.display()
        )));
    }
    make_dir(&dir).map_err(fail)?;
    if !cfg.dir_from_env {
        check_default_dir(&dir).map_err(fail)?;
    }
    let reg = Registry::open_or_create(&dir, crate::config::host_limits(), false).map_err(|e| OpenFailure { errno: e.errno(), msg: e.to_string() })?;
    if cfg.shmmax.is_some() || cfg.shmall.is_some() || cfg.shmmni.is_some() {
        reg.lock_bounded()
            .map_err(|e| OpenFailure { errno: e, msg: format!("registry {}: locked by a process that does not let go", dir.display()) })?
            .set_limits(cfg.shmmax, cfg.shmall, cfg.shmmni);
    }
    Ok(Namespace { reg, dir })
}

/// This process's namespace, opened at its first use (or early, see `client::prepare`).
/// One that cannot be used is reported on stderr once, naming the problem, and
/// calls fail with ENOSYS (as if SysV IPC were absent); a shortage of descriptors,
/// memory or space fails the call with the kernel's errno and is retried next time.
pub fn namespace() -> SysResult<&'static Namespace> {
    if let Some(ns) = NAMESPACE.get() {
        return Ok(ns);
    }
    static REPORTED: AtomicUsize = AtomicUsize::new(0);
    let _g = OPENING.lock();
    if let Some(ns) = NAMESPACE.get() {
        return Ok(ns);
    }
    match open_namespace() {
        Ok(ns) => Ok(NAMESPACE.get_or_init(|| ns)),
        Err(f) => {
            if REPORTED.fetch_add(1, Ordering::AcqRel) == 0 {
                eprintln!("shmshim: {}; System V shared memory calls fail with {}", f.msg, f.errno.name());
            }
            Err(f.errno)
        }
    }
}

pub fn registry() -> SysResult<&'static Registry> {
    namespace().map(|ns| &ns.reg)
}

pub fn namespace_if_open() -> Option<&'static Namespace> {
    NAMESPACE.get()
}

/// Moves a descriptor out of reach of daemons' "close every descriptor" loops,
/// since closing it would make the process look dead to everyone else: to the soft
/// RLIMIT_NOFILE itself where the hard limit leaves room (loops run up to
/// sysconf(_SC_OPEN_MAX), the soft limit), else to min(soft - 1, 4095) (beyond
/// FD_SETSIZE-bounded loops, without growing the descriptor table to a huge soft
/// limit), else to 200.
pub fn beyond_limit_fd(fd: OwnedFd) -> OwnedFd {
    static PLACE: crate::fsmutex::FsMutex<()> = crate::fsmutex::FsMutex::new(());
    let _g = PLACE.lock();
    let (soft, hard) = sys::rlimit_nofile();
    if soft == libc::RLIM_INFINITY || soft < 256 {
        return high_fd(fd);
    }
    if hard > soft + 64 && soft <= 65536 && sys::set_rlimit_nofile(soft + 64, hard).is_ok() {
        let r = sys::dup_at_least(fd.as_raw_fd(), soft as i32);
        let _ = sys::set_rlimit_nofile(soft, hard);
        if let Ok(n) = r {
            return n;
        }
    }
    match sys::dup_at_least(fd.as_raw_fd(), (soft - 1).min(4095) as i32) {
        Ok(n) => n,
        Err(_) => high_fd(fd),
    }
}

/// Moves a descriptor above the soft RLIMIT_NOFILE (raised for a moment to let
/// the duplicate be made there). Gives it back when the limits leave no room.
pub fn above_limit_fd(fd: OwnedFd) -> Result<OwnedFd, OwnedFd> {
    // (soft, hard) at the last refusal, and when: asked again once the limits
    // change, and not read again within the second (this runs at every attach of
    // an uncached segment).
    static PLACE: crate::fsmutex::FsMutex<(u64, u64, i64)> = crate::fsmutex::FsMutex::new((0, 0, i64::MIN));
    let mut refused = PLACE.lock();
    let now = sys::now();
    if refused.2 == now {
        return Err(fd);
    }
    let (soft, hard) = sys::rlimit_nofile();
    if soft == libc::RLIM_INFINITY || soft > i32::MAX as u64 / 2 || (refused.0, refused.1) == (soft, hard) {
        *refused = (soft, hard, now);
        return Err(fd);
    }
    // Within the hard limit where it leaves room; else (a privileged process,
    // CAP_SYS_RESOURCE) above it too, for the moment of the dup: the hard limit
    // goes back to what it was, and the program's own budget is untouched.
    let room = soft + FD_CACHE_ABOVE;
    let raised = if hard > soft { sys::set_rlimit_nofile(room.min(hard), hard) } else { sys::set_rlimit_nofile(room, room) };
    if raised.is_err() {
        *refused = (soft, hard, now);
        return Err(fd);
    }
    let r = sys::dup_at_least(fd.as_raw_fd(), soft as i32);
    let _ = sys::set_rlimit_nofile(soft, hard);
    r.map_err(|_| fd)
}

pub use crate::sys::high_fd;

impl Local {
    pub fn count_frags(&self) -> usize {
        self.attaches.iter().map(|a| a.frags.len()).sum()
    }

    pub fn publish_count(&self) {
        NFRAGS.store(self.count_frags(), Ordering::Release);
    }

    /// The validated cached read-write descriptor for `serial` and its status, its
    /// file at least `size` bytes long.
    pub fn cached_rw(&mut self, serial: u64, ino: u64, size: u64) -> Option<(RawFd, libc::stat)> {
        let c = self.fds.get(&serial)?;
        match c.ours(c.rw).filter(|st| c.ino == ino && sized(c.rw, st, size)) {
            Some(st) => Some((c.rw, st)),
            None => {
                // The program closed or replaced our descriptor: Drop will not
                // close a number that is no longer ours.
                self.fds.remove(&serial);
                None
            }
        }
    }

    /// A validated cached descriptor for `serial` (rdonly: a read-only reopen),
    /// its file at least `size` bytes long: one lseek where the number holds the
    /// file it was given (see `fd_tag`) and its length is known.
    pub fn cached_fd(&mut self, serial: u64, ino: u64, size: u64, rdonly: bool) -> Option<RawFd> {
        let c = self.fds.get_mut(&serial)?;
        // (`len` is at least the segment's file length from the moment it is
        // cached: cache_fd is given it.)
        if c.ino != ino || c.len < size || !c.still_ours(c.rw) {
            // The program closed or replaced our descriptor: Drop will not
            // close a number that is no longer ours.
            self.fds.remove(&serial);
            return None;
        }
        if !rdonly {
            return Some(c.rw);
        }
        if let Some(ro) = c.ro {
            if c.still_ours(ro) {
                return Some(ro);
            }
            c.ro = None; // not ours any more: forget it
        }
        let ro = high_fd(reopen(c.rw, libc::O_RDONLY).ok()?).into_raw_fd();
        set_tag(ro, ino); // a new open file: untagged
        c.ro = Some(ro);
        c.ro
    }

    /// Caches a descriptor of segment `serial` (a memfd opened read-write; the
    /// read-only reopen is made when first needed). The kernel's shm calls cost
    /// the caller no descriptor: at most `FdCache::budget` of ours sit below the
    /// soft RLIMIT_NOFILE, the rest above it where the hard limit leaves room.
    /// Returns the descriptor if there was no room to keep it (the caller uses
    /// it once). `st`: its status, if the caller has it already.
    pub fn cache_fd(&mut self, slot: usize, serial: u64, ino: u64, fd: OwnedFd, st: Option<libc::stat>, len: u64) -> Option<OwnedFd> {
        self.fds.remove(&serial);
        let (fd, above) = if self.fds.room_below() {
            (high_fd(fd), false)
        } else {
            match above_limit_fd(fd) {
                Ok(fd) => (fd, true),
                // No room above: now and then one replaces a cached descriptor;
                // else the caller uses it once (cheaper than turning the cache
                // over when a process goes round more segments than it holds).
                Err(fd) if self.fds.replace_one() => (high_fd(fd), false),
                Err(fd) => return Some(fd),
            }
        };
        // The device, which the caller's check by tag did not need: what Drop and
        // emptying compare before they act on the number.
        let (dev, len) = match st.map_or_else(|| sys::fstat(fd.as_raw_fd()), Ok) {
            Ok(st) if st.st_ino == ino => (st.st_dev, (st.st_size as u64).max(len)),
            _ => return Some(fd),
        };
        tag_fd(fd.as_raw_fd(), ino);
        self.fds.insert(serial, CachedFd { slot, ino, dev, rw: fd.into_raw_fd(), ro: None, above, len });
        None
    }

    /// Drops cached descriptors of segments destroyed since the last call, so their
    /// memory is freed: O(destructions), from the header's ring, or a full pass when
    /// more happened than the ring remembers. Reads atomics only: called without
    /// the registry lock (closing the last descriptor of a big segment frees its
    /// pages, which must not hold up other processes).
    pub fn sweep_fds(&mut self, reg: &Registry) {
        let epoch = reg.header().destroy_epoch.atomic().load(Ordering::Acquire);
        let from = self.epoch;
        self.sweep_destroyed(reg, epoch);
        // Memory that emptying did not free is the server's to release: wake it,
        // unless every destruction swept was emptied (by us or another process).
        if RELEASE_PENDING.swap(false, Ordering::AcqRel) && !reg.emptied_between(from, epoch) {
            wake_server();
        }
    }

    fn sweep_destroyed(&mut self, reg: &Registry, epoch: u64) {
        let h = reg.header();
        if epoch == self.epoch {
            return;
        }
        if epoch.wrapping_sub(self.epoch) > crate::registry::DESTROYED_RING as u64 {
            self.fds.retain(|&serial, c| {
                let s = reg.slot(c.slot);
                s.is_used() && s.serial.get() == serial
            });
        } else {
            for e in self.epoch..epoch {
                let i = e as usize % crate::registry::DESTROYED_RING;
                let serial = h.destroyed[i].atomic().load(Ordering::Acquire);
                if let Some(c) = self.fds.remove(&serial) {
                    // A shared namespace's client maps the registry read-only (and
                    // its server empties what it destroys).
                    if reg.writable && c.empty() {
                        h.emptied[i].atomic().store(serial, Ordering::Release);
                    }
                }
            }
        }
        self.epoch = epoch;
    }
}

/// Gives a segment's memfd its size if it has none yet (a pooled memfd is
/// created empty and sized by its first mapping; mapping beyond its end would
/// fault). `st` is its fstat. False if it cannot be sized (a read-only
/// descriptor of an unsized file: the server sizes what it hands out).
pub fn sized(fd: RawFd, st: &libc::stat, size: u64) -> bool {
    st.st_size as u64 >= size || sys::set_size(fd, size).map(|_| set_tag(fd, st.st_ino)).is_ok()
}

/// Reopens a descriptor through /proc/self/fd with other access flags: a read-only
/// reopen of the memfd gives mappings that refuse mprotect(PROT_WRITE) (S53).
pub fn reopen(fd: RawFd, flags: i32) -> SysResult<OwnedFd> {
    sys::open(&sys::cstr(std::path::Path::new(&format!("/proc/self/fd/{fd}"))), flags, 0)
}

/// This process's start time (clock ticks after boot), which with its pid names it.
/// Whether process `pid` started at `start` still runs (a zombie has ended):
/// what tells an exec or a closed connection from an exit.
pub fn runs(pid: i32, start: u64) -> bool {
    sys::read_small(&format!("/proc/{pid}/stat"))
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let mut f = rest.split_whitespace();
            let state = f.next()?;
            let st: u64 = f.nth(18)?.parse().ok()?;
            Some(st == start && start != 0 && state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

pub fn start_time(pid: i32) -> u64 {
    sys::read_small(&format!("/proc/{pid}/stat"))
        .and_then(|s| {
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Sends a message that needs no reply: best effort, never waits, needs no lock
/// (the connection's number is published in `SOCKFD`).
pub fn notify(m: &crate::proto::Msg) {
    let fd = SOCKFD.load(Ordering::Acquire);
    let ino = SOCKINO.load(Ordering::Acquire);
    // The number may be the program's now, if it closed ours.
    if fd >= 0 && matches!(sys::fstat(fd), Ok(st) if st.st_ino == ino) {
        let _ = sys::send_with_fds(fd, &m.bytes(), &[], libc::MSG_DONTWAIT);
    }
}

/// Set when this process destroyed a segment whose memory is worth a wake-up of
/// the server (1 MiB or more, or huge pages), until its next descriptor sweep.
static RELEASE_PENDING: AtomicBool = AtomicBool::new(false);

/// A segment worth a wake-up of the server was destroyed: its memory is released
/// at this process's next descriptor sweep (which follows every call that destroys),
/// by emptying the memfd if this process holds it, else by waking the server.
pub fn release_soon() {
    RELEASE_PENDING.store(true, Ordering::Release);
}

/// Wakes the server: a removed segment's memory is to be released now.
pub fn wake_server() {
    notify(&crate::proto::Msg::new(crate::proto::REFILL));
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_names_this_process() {
        let me = crate::sys::getpid();
        let t = super::start_time(me);
        assert!(t > 0);
        assert_eq!(t, super::start_time(me));
        assert_eq!(super::start_time(i32::MAX), 0);
    }
}
