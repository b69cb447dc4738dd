//! Per-process state: this process's attaches (as mapping fragments, S71–S74), its
//! cache of segment descriptors, and its entry in the registry's proc table.
//!
//! `LOCAL` is taken before the registry lock, never after (see `registry`).

use crate::registry::{RegGuard, Registry, LIVE_BASE, MAX_PROCS};
use crate::sys::{self, Errno, SysResult};
#[allow(unused_imports)]
use std::os::fd::FromRawFd;
use once_cell::sync::OnceCell;
use crate::fsmutex::FsMutex;
use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const PAGE: usize = 4096;

/// Cached segment descriptors kept beyond those of attached segments.
pub const FD_CACHE: usize = 32;

/// Fragment flag: MADV_DONTFORK (VM_DONTCOPY), not inherited by fork (S124).
pub const FL_DONTFORK: u32 = 1 << 8;
/// Fragment flag: MADV_DONTDUMP (VM_DONTDUMP).
pub const FL_DONTDUMP: u32 = 1 << 9;

/// One mapping fragment (a VMA of an attach). `pgoff` is the byte offset in the
/// segment of `addr`; `flags` holds the PROT_* bits and FL_* flags, which decide
/// whether neighbouring fragments may merge (S72).
#[derive(Clone, Debug)]
pub struct Frag {
    pub addr: usize,
    pub len: usize,
    pub pgoff: usize,
    pub flags: u32,
}

impl Frag {
    pub fn end(&self) -> usize {
        self.addr + self.len
    }
    pub fn dontfork(&self) -> bool {
        self.flags & FL_DONTFORK != 0
    }
}

/// One shmat: the kernel's per-attach `struct file`.
#[derive(Clone, Debug)]
pub struct Attach {
    pub slot: usize,
    pub serial: u64,
    /// PAGE_ALIGN(segsz) (or the huge-page-rounded length): bounds shmdt's search.
    pub map_len: usize,
    pub frags: Vec<Frag>,
}

/// A cached descriptor of a segment, validated by inode before each use and
/// before it is closed (a program that closes descriptors it did not open may have
/// reused the number).
pub struct CachedFd {
    pub slot: usize,
    pub ino: u64,
    pub rw: RawFd,
    pub ro: Option<RawFd>,
}

impl Drop for CachedFd {
    fn drop(&mut self) {
        for fd in std::iter::once(self.rw).chain(self.ro) {
            if matches!(sys::fstat(fd), Ok(st) if st.st_ino == self.ino) {
                sys::close(fd);
            }
        }
    }
}

#[derive(Default)]
pub struct Local {
    /// Our proc-table entry, once claimed.
    pub me: Option<usize>,
    /// Descriptor holding our liveness lock (O_CLOEXEC: exec releases it).
    pub live_fd: Option<OwnedFd>,
    pub attaches: Vec<Attach>,
    /// Cached descriptors by segment serial.
    pub fds: std::collections::BTreeMap<u64, CachedFd>,
    /// Last registry destroy_epoch this process swept its cache at.
    pub epoch: u64,
    /// The pid `me` was claimed for: a child made by a raw fork/clone (no hook
    /// ran) notices it is not that process and claims its own entry.
    pub pid: i32,
}

/// This process's state. A fork-safe mutex: `fork` holds it across the real fork
/// while other threads may be waiting for it.
pub static LOCAL: FsMutex<Local> = FsMutex::new(Local {
    me: None,
    live_fd: None,
    attaches: Vec::new(),
    fds: std::collections::BTreeMap::new(),
    epoch: 0,
    pid: 0,
});

/// This process's proc entry (usize::MAX: none), readable without LOCAL.
static ME: AtomicUsize = AtomicUsize::new(usize::MAX);

pub fn my_entry() -> Option<usize> {
    let v = ME.load(Ordering::Acquire);
    if v == usize::MAX {
        None
    } else {
        Some(v)
    }
}

pub fn set_my_entry(me: Option<usize>) {
    ME.store(me.unwrap_or(usize::MAX), Ordering::Release);
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

static REGISTRY: OnceCell<Result<Registry, String>> = OnceCell::new();

/// The default namespace directory lives in world-writable places (/dev/shm,
/// /tmp): it must be ours and writable by nobody else, or another user could
/// have planted a registry and keeper there and would receive our memfds.
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

fn make_dir(dir: &std::path::Path, shared: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    let mode = if shared { 0o1777 } else { 0o700 };
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {
            if shared {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
            }
            Ok(())
        }
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(format!("namespace directory {}: {}", dir.display(), e)),
    }
}

/// Opens (or creates) this process's registry once. A registry that cannot be used
/// is reported on stderr once, naming the file, and every call then fails with
/// ENOSYS, as if SysV IPC were absent (see README, "Errors").
pub fn registry() -> SysResult<&'static Registry> {
    let r = REGISTRY.get_or_init(|| {
        let cfg = crate::config::get();
        let res = make_dir(&cfg.dir, cfg.shared)
            .and_then(|_| if cfg.dir_from_env || cfg.shared { Ok(()) } else { check_default_dir(&cfg.dir) })
            .and_then(|_| Registry::open_or_create(&cfg.dir, crate::config::host_limits(), cfg.shared).map_err(|e| e.to_string()));
        match res {
            Ok(reg) => {
                crate::keeper::prepare(&cfg.dir);
                // Every participating process gets a proc entry, so a restarted
                // keeper can find segment memory that processes hold.
                let mut local = LOCAL.lock();
                let _ = ensure_proc(&mut local, &reg);
                drop(local);
                if cfg.shmmax.is_some() || cfg.shmall.is_some() || cfg.shmmni.is_some() {
                    reg.set_limits(cfg.shmmax, cfg.shmall, cfg.shmmni);
                }
                Ok(reg)
            }
            Err(msg) => {
                eprintln!("shmshim: {msg}; System V shared memory calls will fail with ENOSYS");
                Err(msg)
            }
        }
    });
    r.as_ref().map_err(|_| Errno(libc::ENOSYS))
}

pub fn registry_if_open() -> Option<&'static Registry> {
    REGISTRY.get().and_then(|r| r.as_ref().ok())
}

/// Claims a proc-table entry for this process (once), holding its liveness lock.
pub fn ensure_proc(local: &mut Local, reg: &Registry) -> SysResult<usize> {
    let pid = sys::getpid();
    if let Some(me) = local.me {
        if local.pid == pid {
            if live_fd_intact(local, reg) {
                return Ok(me);
            }
            return reclaim_entry(local, reg, me, pid);
        }
        // A child of a raw fork (or of daemon(), which forks inside libc): the
        // entry and its lock are our parent's. Take our own and count the
        // attaches we inherited, late, as fork would have (S118).
        local.me = None;
        set_my_entry(None);
        if let Some(fd) = local.live_fd.take() {
            drop(fd); // our copy of the parent's description; the parent keeps its own
        }
        for a in local.attaches.iter_mut() {
            a.frags.retain(|f| !f.dontfork());
        }
        local.attaches.retain(|a| !a.frags.is_empty());
        local.publish_count();
    }
    let (fd, p) = claim_entry(reg)?;
    let g = reg.lock();
    init_entry(&g, p, pid);
    for a in &local.attaches {
        let s = g.slot(a.slot);
        if s.state == crate::registry::SLOT_USED && s.serial == a.serial {
            let _ = g.rec_add(p, a.slot, a.frags.len() as u32);
        }
    }
    drop(g);
    local.live_fd = Some(fd);
    local.me = Some(p);
    local.pid = pid;
    set_my_entry(Some(p));
    Ok(p)
}

/// Whether our liveness descriptor is still ours: a daemon that closes "every"
/// descriptor, or dup2s over ours, releases the lock that says we are alive.
fn live_fd_intact(local: &Local, reg: &Registry) -> bool {
    let Some(fd) = &local.live_fd else { return false };
    matches!(sys::fstat(fd.as_raw_fd()), Ok(st) if st.st_ino == reg.live_ino)
}

/// The program closed our liveness descriptor: claim a new entry and move our
/// attaches' records to it (or record them again if someone already reaped them).
fn reclaim_entry(local: &mut Local, reg: &Registry, old: usize, pid: i32) -> SysResult<usize> {
    if let Some(fd) = local.live_fd.take() {
        std::mem::forget(fd); // the number may be the program's now
    }
    let (fd, p) = claim_entry(reg)?;
    let g = reg.lock();
    init_entry(&g, p, pid);
    // Nobody else claimed the old entry (a claim sets its pid): its records are
    // ours to move.
    let still_ours = g.proc_entry(old).pid == pid;
    for a in &local.attaches {
        let n = a.frags.len() as u32;
        let s = g.slot(a.slot);
        if s.state != crate::registry::SLOT_USED || s.serial != a.serial {
            continue;
        }
        if still_ours {
            g.rec_sub(old, a.slot, n);
        }
        let _ = g.rec_add(p, a.slot, n);
    }
    if still_ours {
        g.proc_entry(old).pid = 0;
    }
    drop(g);
    local.live_fd = Some(fd);
    local.me = Some(p);
    set_my_entry(Some(p));
    Ok(p)
}

/// Opens a fresh open file description of the registry and takes the OFD lock of a
/// free proc entry with it. Any entry whose lock is free belongs to nobody alive.
///
/// The new description is a reopen of the namespace's `live` file through
/// /proc/self/fd, which works after the process dropped to a uid that may not
/// search the namespace directory.
pub fn claim_entry(reg: &Registry) -> SysResult<(OwnedFd, usize)> {
    let live = reg.live_fd().ok_or(Errno(libc::ENOSYS))?;
    let fd = beyond_limit_fd(reopen(live, libc::O_RDWR)?);
    let start = reg.header().proc_hint as usize % MAX_PROCS;
    for k in 0..MAX_PROCS {
        let p = (start + k) % MAX_PROCS;
        if sys::ofd_trylock(fd.as_raw_fd(), LIVE_BASE + p as u64, 1)? {
            return Ok((fd, p));
        }
    }
    Err(Errno(libc::ENOSPC))
}

/// Makes entry `p` ours: records a previous (dead) owner left are detached first.
pub fn init_entry(g: &RegGuard, p: usize, pid: i32) {
    g.open_proc_entry(p);
    crate::shm::detach_proc(g, p, sys::now());
    g.proc_entry(p).pid = pid;
    g.hdr().proc_hint = (p as u32 + 1) % MAX_PROCS as u32;
}

/// Moves the liveness descriptor out of reach of daemons' "close every
/// descriptor" loops, since closing it would make the process look dead to
/// everyone else: to the soft RLIMIT_NOFILE itself where the hard limit leaves
/// room (loops run up to sysconf(_SC_OPEN_MAX), the soft limit), else to
/// min(soft - 1, 4095) (beyond FD_SETSIZE-bounded loops, without growing the
/// descriptor table to a huge soft limit).
pub fn beyond_limit_fd(fd: OwnedFd) -> OwnedFd {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct; the soft
    // limit is raised just long enough to place one descriptor, then restored.
    // F_DUPFD_CLOEXEC returns a new descriptor we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 || rl.rlim_cur == libc::RLIM_INFINITY || rl.rlim_cur < 256 {
            return high_fd(fd);
        }
        let soft = rl.rlim_cur;
        let mut r = -1;
        if rl.rlim_max > soft + 64 && soft <= 65536 {
            let raised = libc::rlimit { rlim_cur: soft + 64, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, soft as i32);
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
        if r < 0 {
            r = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, (soft - 1).min(4095) as i32);
        }
        if r < 0 {
            return high_fd(fd);
        }
        OwnedFd::from_raw_fd(r)
    }
}

/// Moves a descriptor to a high number, away from the low numbers programs manage
/// themselves (closing "all" fds from 3 up, dup2 onto 0–2).
pub fn high_fd(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own (or fails).
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 200) };
    if r < 0 {
        return fd;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: r is a fresh descriptor; `fd` is closed when dropped here.
    unsafe { OwnedFd::from_raw_fd(r) }
}

impl Local {
    pub fn count_frags(&self) -> usize {
        self.attaches.iter().map(|a| a.frags.len()).sum()
    }

    pub fn publish_count(&self) {
        NFRAGS.store(self.count_frags(), Ordering::Release);
    }

    /// A validated cached descriptor for `serial` (rdonly: a read-only reopen).
    pub fn cached_fd(&mut self, serial: u64, ino: u64, rdonly: bool) -> Option<RawFd> {
        let c = self.fds.get_mut(&serial)?;
        let ok = c.ino == ino && matches!(sys::fstat(c.rw), Ok(st) if st.st_ino == ino);
        if !ok {
            // The program closed or replaced our descriptor: Drop will not close
            // a number that is no longer ours.
            self.fds.remove(&serial);
            return None;
        }
        if !rdonly {
            return Some(c.rw);
        }
        if let Some(ro) = c.ro {
            if matches!(sys::fstat(ro), Ok(st) if st.st_ino == ino) {
                return Some(ro);
            }
            c.ro = None; // not ours any more: forget it
        }
        let ro = reopen(c.rw, libc::O_RDONLY).ok()?;
        c.ro = Some(std::os::fd::IntoRawFd::into_raw_fd(high_fd(ro)));
        c.ro
    }

    pub fn cache_fd(&mut self, slot: usize, serial: u64, ino: u64, fd: OwnedFd) {
        let rw = std::os::fd::IntoRawFd::into_raw_fd(high_fd(fd));
        self.fds.insert(serial, CachedFd { slot, ino, rw, ro: None });
        // The kernel's shmget costs the caller no descriptor: keep at most
        // FD_CACHE of ours beyond the attached segments', dropping the oldest.
        if self.fds.len() > FD_CACHE {
            let attached: std::collections::BTreeSet<u64> = self.attaches.iter().map(|a| a.serial).collect();
            let spare: Vec<u64> = self.fds.keys().copied().filter(|s| !attached.contains(s) && *s != serial).collect();
            let excess = self.fds.len() - FD_CACHE;
            for s in spare.into_iter().take(excess) {
                self.fds.remove(&s);
            }
        }
    }

    /// Drops cached descriptors of segments destroyed since the last call, so
    /// their memory is freed: O(destructions), from the header's ring, or a
    /// full pass when more happened than the ring remembers.
    pub fn sweep_fds(&mut self, g: &RegGuard) {
        let h = g.hdr();
        let epoch = h.destroy_epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return;
        }
        if epoch - self.epoch > crate::registry::DESTROYED_RING as u64 || epoch < self.epoch {
            self.fds.retain(|&serial, c| {
                let s = g.slot(c.slot);
                s.state == crate::registry::SLOT_USED && s.serial == serial
            });
        } else {
            for e in self.epoch..epoch {
                self.fds.remove(&h.destroyed[e as usize % crate::registry::DESTROYED_RING].load(Ordering::Acquire));
            }
        }
        self.epoch = epoch;
    }
}

/// Reopens a descriptor through /proc/self/fd with other access flags: a read-only
/// reopen of the memfd gives mappings that refuse mprotect(PROT_WRITE) (S53).
pub fn reopen(fd: RawFd, flags: i32) -> SysResult<OwnedFd> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
    sys::open(&p, flags, 0)
}
