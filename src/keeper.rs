//! The keeper: one small process per namespace that holds every segment's memfd
//! while no process has it, so a segment outlives its creator (S127).
//!
//! Protocol: datagrams on `DIR/keeper.sock` (one queue, so a PUT sent before a GET
//! is always handled first). Each message is a [`Msg`]:
//! - `PUT` carries the new segment's memfd (SCM_RIGHTS). The keeper keeps it and
//!   publishes its own fd number in the slot (`Slot::keeper_fd`), so same-uid
//!   processes can open `/proc/KEEPER/fd/N` without a round trip.
//! - `GET` carries one end of a socketpair; the keeper answers on it with the memfd
//!   (the path for other uids, for whom /proc/KEEPER/fd is closed).
//! - `DROP` closes the keeper's descriptor of a destroyed segment.
//!
//! The keeper never takes the registry lock while a sender might wait on it, and
//! exits once it holds nothing and the namespace has no segments. It is started by
//! the library (`spawn`), as `shmshim keeper` with an empty environment (no
//! LD_PRELOAD) and no inherited descriptors. `DIR/keeper.lock` (flock) makes sure
//! only one keeper serves a namespace.

use crate::registry::{Registry, SLOT_USED};
use crate::sys::{self, Errno, SysResult};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const OP_PUT: u32 = 1;
pub const OP_DROP: u32 = 2;
pub const OP_GET: u32 = 3;
/// A wake-up: the pool is half empty.
pub const OP_REFILL: u32 = 4;

/// How long an idle keeper of an empty namespace stays.
pub const LINGER: Duration = Duration::from_millis(300);

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Msg {
    pub op: u32,
    pub slot: u32,
    pub serial: u64,
    /// GET replies: 0 or an errno.
    pub err: u32,
}

impl Msg {
    fn bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.op.to_ne_bytes());
        b[4..8].copy_from_slice(&self.slot.to_ne_bytes());
        b[8..16].copy_from_slice(&self.serial.to_ne_bytes());
        b[16..20].copy_from_slice(&self.err.to_ne_bytes());
        b
    }
    fn parse(b: &[u8]) -> Option<Msg> {
        if b.len() < 24 {
            return None;
        }
        Some(Msg {
            op: u32::from_ne_bytes(b[0..4].try_into().ok()?),
            slot: u32::from_ne_bytes(b[4..8].try_into().ok()?),
            serial: u64::from_ne_bytes(b[8..16].try_into().ok()?),
            err: u32::from_ne_bytes(b[16..20].try_into().ok()?),
        })
    }
}

pub fn sock_path(dir: &Path) -> PathBuf {
    dir.join("keeper.sock")
}

// ------------------------------------------------------------------ client side

/// This process's socket to the keeper, connected once so that sends keep working
/// after the process drops to a uid that may not search the namespace directory.
/// Checked by inode before each use: a program that closes "all" descriptors may
/// have reused the number, and our datagrams must never reach its sockets.
pub static CLIENT: crate::fsmutex::FsMutex<Option<(RawFd, u64)>> = crate::fsmutex::FsMutex::new(None);

fn client(dir: &Path) -> SysResult<RawFd> {
    let mut c = CLIENT.lock();
    if let Some((fd, ino)) = *c {
        if sys::fstat(fd).map(|st| st.st_ino == ino).unwrap_or(false) {
            return Ok(fd);
        }
        *c = None; // not ours any more: forget it without closing
    }
    let s = crate::process::high_fd(sys::socket_dgram()?);
    let _ = sys::connect(s.as_raw_fd(), &sock_path(dir));
    let ino = sys::fstat(s.as_raw_fd())?.st_ino;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(s);
    *c = Some((fd, ino));
    Ok(fd)
}

/// Connects this process's keeper socket early (while it may still reach the
/// namespace directory).
pub fn prepare(dir: &Path) {
    let _ = client(dir);
}

/// Sends a message to the namespace's keeper, starting one if none runs.
pub fn send(dir: &Path, msg: Msg, fds: &[RawFd], may_spawn: bool) -> SysResult<()> {
    let path = sock_path(dir);
    let sock = client(dir)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut spawned: Option<Instant> = None;
    let mut delay = Duration::from_micros(100);
    loop {
        match sys::send_with_fds(sock, &msg.bytes(), fds, 0) {
            Ok(()) => return Ok(()),
            Err(Errno(libc::ECONNREFUSED)) | Err(Errno(libc::ENOTCONN)) | Err(Errno(libc::EDESTADDRREQ)) => {
                // The keeper we were connected to is gone (or never was): connect
                // again by path, and start one if nobody listens there.
                match sys::connect(sock, &path) {
                    Ok(()) => continue,
                    Err(Errno(libc::ECONNREFUSED)) | Err(Errno(libc::ENOENT)) if may_spawn && spawned.is_none_or(|t: Instant| t.elapsed() > Duration::from_millis(500)) => {
                        // Start one (again, if the last one lost a race with an
                        // exiting keeper).
                        spawn(dir)?;
                        spawned = Some(Instant::now());
                    }
                    Err(Errno(libc::ECONNREFUSED)) | Err(Errno(libc::ENOENT)) if spawned.is_some() => {}
                    Err(e) => return Err(e),
                }
            }
            Err(Errno(libc::EAGAIN)) | Err(Errno(libc::ENOBUFS)) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(Errno(libc::ENOMEM));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Best-effort notification (DROP): never starts a keeper, never waits.
pub fn notify(dir: &Path, msg: Msg) {
    if let Ok(sock) = client(dir) {
        let _ = sys::send_with_fds(sock, &msg.bytes(), &[], libc::MSG_DONTWAIT);
    }
}

/// Asks the keeper for a segment's descriptor over SCM_RIGHTS.
pub fn get(dir: &Path, slot: usize, serial: u64) -> SysResult<OwnedFd> {
    let (mine, theirs) = sys::socketpair_dgram()?;
    sys::set_rcvtimeo(mine.as_raw_fd(), 5000);
    send(dir, Msg { op: OP_GET, slot: slot as u32, serial, ..Default::default() }, &[theirs.as_raw_fd()], false)?;
    drop(theirs);
    let mut buf = [0u8; 64];
    let r = sys::recv_with_fds(mine.as_raw_fd(), &mut buf, 0)?;
    let reply = Msg::parse(&buf[..r.len]).ok_or(Errno(libc::EIO))?;
    if reply.err != 0 {
        return Err(Errno(reply.err as i32));
    }
    r.fds.into_iter().next().ok_or(Errno(libc::EIO))
}

/// Where the `shmshim` binary is: $SHMSHIM_KEEPER, else beside this library (or
/// this executable), else on PATH.
pub fn keeper_binary() -> Option<PathBuf> {
    if let Some(p) = &crate::config::get().keeper_bin {
        return Some(p.clone());
    }
    // SAFETY: dladdr only reads the loader's tables for an address in this object.
    let me = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(keeper_binary as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            Some(PathBuf::from(std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()))
        } else {
            None
        }
    };
    let mut candidates = Vec::new();
    if let Some(me) = me {
        if let Some(d) = me.parent() {
            candidates.push(d.join("shmshim"));
            candidates.push(d.join("../bin/shmshim"));
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().map(|n| n == "shmshim").unwrap_or(false) {
            candidates.push(exe);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in path.split(':') {
            candidates.push(Path::new(d).join("shmshim"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Starts a keeper for `dir` and returns once it was launched (the caller retries
/// its send until the socket answers).
pub fn spawn(dir: &Path) -> SysResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let bin = keeper_binary().ok_or_else(|| {
        eprintln!("shmshim: cannot find the shmshim binary to start the keeper; set SHMSHIM_KEEPER=/path/to/shmshim");
        Errno(libc::ENOMEM)
    })?;
    let cbin = std::ffi::CString::new(bin.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    let shared = if crate::config::get().shared { "1" } else { "0" };
    let args = [c"shmshim".as_ptr(), c"keeper".as_ptr(), c"--daemon".as_ptr(), c"--dir".as_ptr(), cdir.as_ptr(), std::ptr::null()];
    let env_shared = std::ffi::CString::new(format!("SHMSHIM_SHARED={shared}")).unwrap();
    let envp = [env_shared.as_ptr(), std::ptr::null()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv/envp are NULL-terminated arrays of NUL-terminated strings that
    // outlive the call. posix_spawn runs no atfork handlers and shares no state with
    // the child beyond the exec; the environment given is empty of LD_PRELOAD.
    let r = unsafe {
        libc::posix_spawn(&mut pid, cbin.as_ptr(), std::ptr::null(), std::ptr::null(), args.as_ptr() as *const *mut _, envp.as_ptr() as *const *mut _)
    };
    if r != 0 {
        eprintln!("shmshim: cannot start keeper {}: {}", bin.display(), sys::errno_name(r));
        return Err(Errno(libc::ENOMEM));
    }
    // The launched process forks the daemon and exits at once; reap it.
    let mut status = 0;
    // SAFETY: waiting for the child we just started.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(())
}

/// Finds a segment's memory in a live participating process when the keeper does
/// not have it (the keeper died): any descriptor or mapping of the memfd, found
/// through /proc/PID/fd and /proc/PID/map_files and checked by inode.
/// Pids of the live participating processes (taken under the lock, used after).
pub fn live_pids(g: &crate::registry::RegGuard) -> Vec<i32> {
    g.all_procs(None).into_iter().filter(|&p| g.reg.proc_alive(p)).map(|p| g.proc_entry(p).pid).filter(|&pid| pid > 0).collect()
}

/// Looks for the memfd with inode `ino` among `pids`' descriptors and mappings.
/// Call it without holding the registry lock: it reads /proc of other processes.
pub fn recover_fd(pids: &[i32], ino: u64) -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let pids = pids.to_vec();
    let me = sys::getpid();
    for pid in std::iter::once(me).chain(pids.into_iter().filter(|&p| p != me)) {
        for sub in ["fd", "map_files"] {
            let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/{sub}")) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                if std::fs::metadata(&path).map(|m| m.ino() == ino).unwrap_or(false) {
                    let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) else { continue };
                    if let Ok(fd) = sys::open(&c, libc::O_RDWR, 0) {
                        if sys::fstat(fd.as_raw_fd()).map(|st| st.st_ino == ino).unwrap_or(false) {
                            return Some(fd);
                        }
                    }
                }
            }
        }
    }
    None
}

// ------------------------------------------------------------------ keeper side

/// Detaches from the caller (fork, setsid) and closes every inherited descriptor.
pub fn daemonize() {
    // SAFETY: single-threaded at this point (keeper start-up, right after exec).
    unsafe {
        let pid = libc::fork();
        if pid != 0 {
            libc::_exit(if pid > 0 { 0 } else { 1 });
        }
        libc::setsid();
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
        libc::umask(0o077);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The keeper's state: every descriptor it holds, by number. Which segment (or
/// pool entry) each belongs to is recorded in the registry: a slot's `keeper_fd`
/// names (serial, fd), a pool entry names an fd. Whatever the registry no longer
/// names is closed.
struct Keeper<'a> {
    reg: &'a Registry,
    fds: HashMap<RawFd, OwnedFd>,
    /// Which descriptor holds which segment (by serial).
    by_serial: HashMap<u64, RawFd>,
    /// destroy_epoch and pool_taken at the last sweep.
    seen: (u64, u64),
    /// Fresh memfds, waiting for a free pool entry.
    spare: Vec<(OwnedFd, u64)>,
    /// More destructions happened than the ring remembers: rebuild from the
    /// registry at the next full sweep.
    need_full: bool,
    /// Segments nobody handed us (a previous keeper died), found by the last full
    /// sweep, and the live processes that may hold their memory.
    orphans: Vec<(usize, u64, u64)>,
    orphan_pids: Vec<i32>,
}

impl Keeper<'_> {
    /// Adopts orphaned segments' memory from live processes that have it, without
    /// holding the lock (it reads other processes' /proc entries); memory nobody
    /// has is gone, as after a reboot, and so is the segment (under the lock,
    /// if it is still that segment).
    fn adopt_orphans(&mut self, sock: RawFd, buf: &mut [u8; 64]) {
        let orphans = std::mem::take(&mut self.orphans);
        let pids = std::mem::take(&mut self.orphan_pids);
        let mut lost = Vec::new();
        for (slot, serial, ino) in orphans {
            match recover_fd(&pids, ino) {
                Some(fd) => {
                    let n = fd.as_raw_fd();
                    self.fds.insert(n, fd);
                    self.by_serial.insert(serial, n);
                    self.publish(slot, serial, n);
                }
                None => lost.push((slot, serial)),
            }
        }
        if lost.is_empty() {
            return;
        }
        let reg = self.reg;
        let g = lock_draining(reg, self, sock, buf);
        for (slot, serial) in lost {
            let s = g.slot(slot);
            let held = s.keeper_fd_of(serial).is_some_and(|fd| self.fds.contains_key(&fd));
            if s.state == SLOT_USED && s.serial == serial && !held {
                crate::shm::shm_destroy(&g, slot);
            }
        }
    }
}

impl Keeper<'_> {
    fn publish(&self, slot: usize, serial: u64, fd: RawFd) {
        self.reg.slot_ref(slot).set_keeper_fd(serial, fd);
    }

    /// The descriptor the keeper holds for segment `serial` in `slot`, if any.
    fn fd_of(&self, slot: usize, serial: u64) -> Option<&OwnedFd> {
        self.fds.get(&self.reg.slot_ref(slot).keeper_fd_of(serial)?)
    }

    /// Handles every datagram waiting on `sock`; true if there was any.
    fn drain(&mut self, sock: RawFd, buf: &mut [u8; 64]) -> bool {
        let mut any = false;
        while let Ok(r) = sys::recv_with_fds(sock, buf, libc::MSG_DONTWAIT) {
            any = true;
            if let Some(m) = Msg::parse(&buf[..r.len]) {
                self.handle(m, r.fds, r.cred);
            }
        }
        any
    }

    fn handle(&mut self, m: Msg, mut fds: Vec<OwnedFd>, cred: Option<libc::ucred>) {
        if m.slot as usize >= crate::registry::MAX_SLOTS {
            return; // not from shmshim: drop it (and any descriptor it carried)
        }
        match m.op {
            OP_PUT => {
                // Never replace the memfd we already hold for that segment.
                if self.fd_of(m.slot as usize, m.serial).is_some() {
                    return;
                }
                if let Some(fd) = fds.pop() {
                    let n = fd.as_raw_fd();
                    self.fds.insert(n, fd);
                    self.by_serial.insert(m.serial, n);
                    self.publish(m.slot as usize, m.serial, n);
                }
            }
            OP_DROP => {
                // Only a wake-up: destroy_epoch has changed, so the main loop
                // sweeps (after draining the queue) and closes the memfd.
            }
            OP_GET => {
                let Some(reply) = fds.pop() else { return };
                let mut out = Msg { op: OP_GET, slot: m.slot, serial: m.serial, ..Default::default() };
                let allowed = cred.map(|c| may_get(self.reg, m.slot as usize, m.serial, c.uid)).unwrap_or(false);
                match self.fd_of(m.slot as usize, m.serial) {
                    Some(fd) if allowed => {
                        let _ = sys::send_with_fds(reply.as_raw_fd(), &out.bytes(), &[fd.as_raw_fd()], libc::MSG_DONTWAIT);
                    }
                    _ => {
                        out.err = if allowed { libc::ENOENT as u32 } else { libc::EACCES as u32 };
                        let _ = sys::send_with_fds(reply.as_raw_fd(), &out.bytes(), &[], libc::MSG_DONTWAIT);
                    }
                }
            }
            _ => {}
        }
    }

    /// Without the lock: file pooled memfds that creators took under their
    /// segment's serial, close the memfds of segments destroyed since the last
    /// look (from the header's ring), and put spare memfds into empty pool
    /// entries. O(pool + changes), so it runs on every wake-up.
    fn sweep_changes(&mut self) {
        let h = self.reg.header();
        for e in h.pool.iter() {
            let fd = e.fd.load(Ordering::Acquire);
            let taken = e.taken.load(Ordering::Acquire);
            if fd < 0 && taken != 0 {
                self.by_serial.insert(taken, -fd);
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            }
        }
        let (seen_epoch, _) = self.seen;
        let epoch = h.destroy_epoch.load(Ordering::Acquire);
        if epoch.wrapping_sub(seen_epoch) > crate::registry::DESTROYED_RING as u64 {
            self.need_full = true;
        } else {
            for e in seen_epoch..epoch {
                let serial = h.destroyed[e as usize % crate::registry::DESTROYED_RING].load(Ordering::Acquire);
                if let Some(fd) = self.by_serial.remove(&serial) {
                    self.fds.remove(&fd);
                }
            }
        }
        self.seen = (epoch, h.pool_taken.load(Ordering::Acquire));
        // Empty memfds cost no memory: keep the pool full while the keeper runs.
        h.refill_asked.store(0, Ordering::Release);
        let free = h.pool.iter().filter(|e| e.fd.load(Ordering::Acquire) == 0 && e.taken.load(Ordering::Acquire) == 0).count();
        while self.spare.len() < free {
            let Ok(fd) = sys::memfd_create(c"SYSV", libc::MFD_CLOEXEC) else { break };
            let Ok(st) = sys::fstat(fd.as_raw_fd()) else { break };
            self.spare.push((fd, st.st_ino));
        }
        for e in h.pool.iter() {
            if e.fd.load(Ordering::Acquire) != 0 || e.taken.load(Ordering::Acquire) != 0 {
                continue;
            }
            let Some((fd, ino)) = self.spare.pop() else { break };
            let n = fd.as_raw_fd();
            self.fds.insert(n, fd);
            e.ino.store(ino, Ordering::Release);
            e.fd.store(n, Ordering::Release);
        }
    }

    /// Under the lock, once a second: detach dead processes' attaches, rebuild the
    /// keeper's bookkeeping from the registry (closing whatever no slot or pool
    /// entry names), and adopt orphaned segments.
    fn sweep_full(&mut self, g: &crate::registry::RegGuard) {
        let h = g.hdr();
        crate::shm::reap_all(g, None);
        let mut named = std::collections::HashSet::new();
        let mut orphans = Vec::new();
        self.by_serial.clear();
        for i in 0..=h.max_idx.max(-1) as isize {
            let s = g.slot(i as usize);
            if s.state != SLOT_USED {
                continue;
            }
            let held = s.keeper_fd_of(s.serial).filter(|fd| self.fds.contains_key(fd));
            if let Some(fd) = held {
                named.insert(fd);
                self.by_serial.insert(s.serial, fd);
            } else {
                orphans.push((i as usize, s.serial, s.ino));
            }
        }
        // No creator is mid-claim while we hold the lock: a claim without a
        // serial was abandoned and goes back to the pool; a claim with one is
        // filed; an entry naming a descriptor we do not hold is emptied.
        for e in h.pool.iter() {
            let fd = e.fd.load(Ordering::Acquire);
            let taken = e.taken.load(Ordering::Acquire);
            if fd < 0 && taken != 0 && self.fds.contains_key(&-fd) {
                named.insert(-fd);
                self.by_serial.insert(taken, -fd);
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            } else if fd != 0 && self.fds.contains_key(&fd.abs()) {
                named.insert(fd.abs());
                e.fd.store(fd.abs(), Ordering::Release);
            } else {
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            }
        }
        self.fds.retain(|fd, _| named.contains(fd));
        if !orphans.is_empty() {
            self.orphans = orphans;
            self.orphan_pids = live_pids(g);
        }
        self.seen = (h.destroy_epoch.load(Ordering::Acquire), h.pool_taken.load(Ordering::Acquire));
        self.need_full = false;
    }
}

/// Runs the keeper for `dir` until the namespace is empty. Returns the exit code.
pub fn run(dir: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let lock_path = std::ffi::CString::new(dir.join("keeper.lock").as_os_str().as_bytes()).unwrap();
    let lock = match sys::open(&lock_path, libc::O_RDWR | libc::O_CREAT, 0o600) {
        Ok(f) => f,
        Err(_) => return 1,
    };
    // SAFETY: flock on our own descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return 0; // another keeper serves this namespace
    }
    let reg = match Registry::open_or_create(dir, crate::config::host_limits(), crate::config::get().shared) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shmshim keeper: {e}");
            return 1;
        }
    };
    // One descriptor per segment plus the pool: the soft limit a program started
    // us with (often 1024) is not enough for shmmni segments.
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    let path = sock_path(dir);
    let _ = std::fs::remove_file(&path);
    let sock = match sys::socket_dgram() {
        Ok(s) => s,
        Err(_) => return 1,
    };
    if sys::bind(sock.as_raw_fd(), &path).is_err() {
        return 1;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666));
    }
    sys::set_passcred(sock.as_raw_fd());
    reg.header().keeper_pid.store(sys::getpid(), Ordering::Release);

    let mut k = Keeper {
        reg: &reg,
        fds: HashMap::new(),
        by_serial: HashMap::new(),
        seen: (0, 0),
        spare: Vec::new(),
        need_full: true,
        orphans: Vec::new(),
        orphan_pids: Vec::new(),
    };
    let mut last_full = Instant::now() - Duration::from_secs(10);
    let mut last_change = Instant::now();
    // When the namespace empties the keeper lingers briefly, so that a program
    // cycling create/remove does not restart it each time.
    let mut empty_since: Option<Instant> = None;
    let mut buf = [0u8; 64];
    loop {
        // Wake fast while the namespace is busy (pool refills, closing removed
        // segments' memory), slowly when it is quiet.
        let quiet = last_change.elapsed();
        let timeout = if quiet < Duration::from_millis(200) {
            1
        } else if quiet < Duration::from_secs(2) {
            20
        } else {
            200
        };
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout) };
        if k.drain(sock.as_raw_fd(), &mut buf) {
            last_change = Instant::now();
        }
        let before = k.seen;
        k.sweep_changes();
        if k.seen != before {
            last_change = Instant::now();
        }
        // The full sweep takes the lock: once a second, or every 100 ms while the
        // namespace looks empty (to exit on time).
        let since = last_full.elapsed();
        let looks_empty = reg.header().in_use == 0;
        if !(k.need_full || since >= Duration::from_secs(1) || (looks_empty && since >= Duration::from_millis(100))) {
            continue;
        }
        let g = lock_draining(&reg, &mut k, sock.as_raw_fd(), &mut buf);
        // Every published segment's PUT was sent before its creator let go of
        // the lock, so it is in the queue now: take it before the full sweep.
        k.drain(sock.as_raw_fd(), &mut buf);
        last_full = Instant::now();
        k.sweep_full(&g);
        let empty = g.hdr().in_use == 0 && !pending(sock.as_raw_fd());
        if !empty {
            empty_since = None;
        } else if empty_since.get_or_insert_with(Instant::now).elapsed() >= LINGER {
            // Leave before letting go of the lock: the socket and keeper.lock go
            // first, so a creator that comes next finds no keeper and starts one,
            // instead of queueing a memfd on a socket about to close.
            let _ = std::fs::remove_file(&path);
            for e in g.hdr().pool.iter() {
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            }
            reg.header().keeper_pid.store(0, Ordering::Release);
            drop(sock);
            drop(lock);
            drop(g);
            return 0;
        }
        drop(g);
        if !k.orphans.is_empty() {
            k.adopt_orphans(sock.as_raw_fd(), &mut buf);
        }
    }
}

/// Takes the registry lock without ever blocking on it: a holder may be waiting
/// for this keeper to drain its queue (a PUT), so between attempts the queue is
/// drained. A creator looping on create/remove can hold the lock most of the
/// time; this still gets it.
fn lock_draining<'r>(reg: &'r Registry, k: &mut Keeper, sock: RawFd, buf: &mut [u8; 64]) -> crate::registry::RegGuard<'r> {
    loop {
        if let Some(g) = reg.try_lock() {
            return g;
        }
        k.drain(sock, buf);
        // Short naps, not yields: on a busy machine spinning takes the CPU from
        // the very creator holding the lock.
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn pending(sock: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: peek one byte into a valid buffer without blocking.
    unsafe { libc::recv(sock, b.as_mut_ptr() as *mut _, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) >= 0 }
}

/// Coarse check for handing out a descriptor: the shim already applied the exact
/// SysV permission rules in the asking process; the keeper only refuses uids the
/// segment's mode excludes entirely.
fn may_get(reg: &Registry, slot: usize, serial: u64, uid: u32) -> bool {
    // Never wait for the lock (see the module comment); an unlocked read of a
    // slot's ids is good enough for this coarse check.
    let s = reg.slot_ref(slot);
    if s.state != SLOT_USED || s.serial != serial {
        return false;
    }
    uid == 0 || uid == s.uid || uid == s.cuid || s.mode & 0o077 != 0 || uid == sys::geteuid()
}
