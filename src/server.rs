//! The namespace server: the one process per namespace that holds every segment's
//! memfd, learns of every participant's death, and, in a shared (multi-user)
//! namespace, is the only writer of the registry, deciding each change on the
//! requester's kernel-reported credentials.
//!
//! # Events
//! The server waits on its own epoll instance for: the listening socket, every
//! connection (requests, and its hang-up: the participant's death), pidfds of
//! participants adopted after a restart, and the directory (inotify: removing the
//! namespace directory ends the server). A second, *shared* epoll instance holds,
//! per participant, something the kernel closes when the process exits, execs or
//! is killed (its connection, or a pidfd for a participant adopted after a server
//! restart; connections for EPOLLRDHUP, pidfds for EPOLLIN), plus the read end of a pipe whose write
//! end only the server holds. The server applies a death as soon as its own
//! instance reports it. Every participant gets the shared instance at HELLO and
//! checks it with one `epoll_wait(…, 0)` where it must not miss a death (after a
//! wait reports a child's end, at its first call, before reporting a shortage):
//! an event there is a death not yet applied (applied by the participant itself in
//! a private namespace, by the server in a shared one), or the server's own death.
//!
//! # Threads
//! The main thread serves everything; a background thread (`Background`) keeps the
//! pool of empty memfds full. They share the pool entries (atomics, see
//! `registry::PoolEntry`) and `BgState` (a mutex held for a few memory operations
//! at a time). Lock order: the registry lock, then `BgState`; the background thread
//! never takes the registry lock.
//!
//! # Lifetime
//! Started automatically for a private namespace (`--daemon`; it exits 0.3 s after
//! the namespace has no segment) or by the user (`shmshim serve --dir DIR
//! [--shared]`, which stays). A new server adopts every segment some live
//! participant maps or holds (matched by inode through /proc/PID/fd and
//! /proc/PID/map_files) and removes every other one whole, before it answers any
//! request. `DIR/server.lock` (flock) lets one server serve a namespace.
//!
//! # Known gaps
//! - In a shared namespace any client can add descriptors of its own to the shared
//!   epoll instance: a hostile one can make other clients' calls take the slow path
//!   (one round trip to the server), never make them wait for it or read memory.
//! - A participant adopted after a server restart is watched by pidfd until it
//!   registers again: an exec it does before its next SysV call is seen only when
//!   that process exits.
//! - Between a death and the moment the server is told, an observer that learnt of
//!   the death without waiting for the process may read the namespace as it was.

use crate::creds::Creds;
use crate::lifecycle::{self, GetParams, Holder};
use crate::proto::{self, Msg};
use crate::registry::{Registry, SLOT_USED};
use crate::shm;
use crate::sys::{self, Errno, SysResult};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long an automatically started server of an empty namespace stays.
pub const LINGER: Duration = Duration::from_millis(300);
/// How often the main thread looks at the pool and the destructions while the
/// namespace is busy. Anything urgent comes as a message (REFILL when a quarter of
/// the pool is gone, a wake-up when a segment of 1 MiB or more goes); every poll
/// is a wake-up on a CPU a participant may be using.
const ACTIVE_POLL_MS: i32 = 5;

/// Descriptors kept free for connections and replies: a MAKE that would eat into
/// them fails with ENFILE at the shmget that asked.
const FD_RESERVE: usize = 64;

/// vm.max_map_count's default: no process has more VMAs, so no participant more
/// fragments of one segment.
const MAX_MAP_COUNT: u32 = 65530;

/// Connections one user may hold to a shared namespace's server.
const CONNS_PER_UID: usize = 16384;

/// The server's background thread: it keeps the pool of empty memfds full
/// (making one costs a few microseconds of kernel time) on a CPU the creator is
/// not using, while the main thread serves requests and closes the memfds of
/// destroyed segments, so that creating and removing segments is not slowed by
/// the server's share of the work.
struct Background {
    state: std::sync::Mutex<BgState>,
    wake: std::sync::Condvar,
    reg: &'static Registry,
}

#[derive(Default)]
struct BgState {
    /// Memfds the thread may still make (the main thread's descriptor budget).
    fill: usize,
    /// Memfds the thread made and published in the pool, for the main thread to own.
    made: Vec<OwnedFd>,
    /// Claims of pooled memfds the thread emptied from the pool: (serial, fd).
    claimed: Vec<(u64, RawFd)>,
    /// Set by the main thread to wake an idle thread.
    kick: bool,
    /// No thread could be started: the main thread does its work.
    absent: bool,
}

impl Background {
    fn new(reg: &'static Registry) -> std::sync::Arc<Background> {
        std::sync::Arc::new(Background { state: Default::default(), wake: std::sync::Condvar::new(), reg })
    }

    /// Starts the thread: only once the server has adopted the namespace, since
    /// pool entries a previous server left name descriptors that are not ours.
    fn spawn(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        if std::thread::Builder::new().name("shmshim-bg".into()).spawn(move || me.run()).is_err() {
            self.lock().absent = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BgState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until the main thread kicks it (a quarter of the pool is gone, or a
    /// creator asked for a refill), then makes one pass. It never
    /// polls on its own: a wake-up lands on a CPU a creator is using.
    fn run(&self) {
        loop {
            {
                let mut st = self.lock();
                while !st.kick {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.kick = false;
            }
            if !self.reg.intact() {
                return; // the main thread stops too (see `Server::frozen`)
            }
            self.refill();
        }
    }

    /// One pass over the pool: taken entries are emptied (their claims handed to
    /// the main thread) and empty ones filled. True if there was anything to do.
    fn refill(&self) -> bool {
        let mut worked = false;
        for e in self.reg.header().pool.iter() {
            let fd = e.fd.load(Ordering::Acquire);
            let taken = e.taken.load(Ordering::Acquire);
            if fd < 0 && taken != 0 {
                // Handed over before the entry is emptied (the main thread looks
                // at the pool before it takes what was handed over).
                self.lock().claimed.push((taken, -fd));
                // Nothing is written to a registry that was truncated or
                // overwritten meanwhile: checked right before the stores.
                if !self.reg.intact() {
                    return worked;
                }
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
                worked = true;
            }
            if e.fd.load(Ordering::Acquire) != 0 || e.taken.load(Ordering::Acquire) != 0 {
                continue;
            }
            {
                let mut st = self.lock();
                if st.fill == 0 {
                    continue;
                }
                st.fill -= 1;
            }
            worked = true;
            let Ok(fd) = sys::memfd_create(c"SYSV", libc::MFD_CLOEXEC) else { return worked };
            let Ok(st) = sys::fstat(fd.as_raw_fd()) else { return worked };
            let n = fd.as_raw_fd();
            // The entry is reserved (-1 reads as claimed to creators) while its
            // inode is written, and the descriptor is handed over before it is
            // published: whoever claims the entry finds the memfd owned by the
            // server. Nothing is written to a registry that was truncated or
            // overwritten meanwhile.
            // (A descriptor handed over but left unpublished is closed by the
            // main thread's next full sweep.)
            self.lock().made.push(fd);
            if !self.reg.intact() {
                return worked;
            }
            if e.fd.compare_exchange(0, -1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                self.lock().fill += 1;
                continue;
            }
            e.ino.store(st.st_ino, Ordering::Release);
            e.fd.store(n, Ordering::Release);
            self.reg.header().pool_filled.atomic().fetch_add(1, Ordering::AcqRel);
        }
        worked
    }
}

const TAG_LISTEN: u64 = 1;
const TAG_WATCH: u64 = 1 << 41;
const TAG_INOTIFY: u64 = 3;
const TAG_CONN: u64 = 1 << 40;

pub struct Options {
    pub dir: PathBuf,
    pub shared: bool,
    /// Started by a participant: detach, and exit when the namespace is empty.
    pub auto: bool,
}

/// One connection: a participant's (after HELLO, FORK or ADOPT), or a tool's.
struct ConnState {
    /// Owns the connection (closing it ends the registration).
    _fd: OwnedFd,
    /// The registration this connection stands for.
    me: Option<(usize, u32)>,
    /// FORK_REC announcements waiting for the HELLO or FORK they belong to.
    recs: Vec<(usize, u64, u32)>,
    /// Where the connection is registered in the shared epoll instance.
    watched: bool,
    /// The peer's uid when it connected (connections are limited per uid).
    uid: u32,
}

struct Server {
    /// Lives as long as the server process.
    reg: &'static Registry,
    /// The liveness mutex, held from adoption until the server leaves.
    alive: Option<crate::shared::Locked<'static>>,
    dir: PathBuf,
    shared: bool,
    auto: bool,
    gen: u64,
    listen: OwnedFd,
    sock_ino: u64,
    reg_ino: u64,
    own_ep: OwnedFd,
    shared_ep: OwnedFd,
    death_r: OwnedFd,
    _death_w: OwnedFd,
    inotify: Option<OwnedFd>,
    conns: HashMap<RawFd, ConnState>,
    /// Death watches that are not connections: pidfds of participants adopted
    /// after a restart.
    watches: HashMap<(usize, u32), OwnedFd>,
    /// Every segment memfd held, by descriptor number; which segment it holds is
    /// in `by_serial`.
    fds: HashMap<RawFd, OwnedFd>,
    by_serial: HashMap<u64, RawFd>,
    /// Memfds made on request and not yet named by a segment, with the
    /// connection that asked (when it closes, what it did not publish goes).
    made: HashMap<RawFd, RawFd>,
    /// destroy_epoch at the last look.
    seen_epoch: u64,
    /// Entries found unwatched at the last sweep.
    unwatched: Vec<(usize, u32)>,
    fd_limit: usize,
    bg: std::sync::Arc<Background>,
}

fn fail(msg: String) -> i32 {
    eprintln!("shmshim serve: {msg}");
    1
}

/// Runs a server for `opts.dir`; returns the exit code.
pub fn serve(opts: Options) -> i32 {
    sys::lift_fsize_for_server();
    if let Err(m) = prepare_dir(&opts.dir, opts.shared) {
        return fail(m);
    }
    let lock_path = opts.dir.join("server.lock");
    let lock = match sys::open(&sys::cstr(&lock_path), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600) {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {}", lock_path.display(), e.name())),
    };
    if !sys::flock_exclusive(lock.as_raw_fd()) {
        if opts.auto {
            return 0; // another server serves this namespace
        }
        return fail(format!("another server already serves {}", opts.dir.display()));
    }
    if opts.auto {
        sys::daemonize(&[lock.as_raw_fd()]);
    }
    let reg = match Registry::open_or_create(&opts.dir, crate::config::host_limits(), opts.shared) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if reg.is_shared() != opts.shared {
        return fail(format!(
            "{} holds a {} namespace; serve it {} --shared",
            opts.dir.display(),
            if reg.is_shared() { "shared" } else { "private" },
            if reg.is_shared() { "with" } else { "without" }
        ));
    }
    if opts.shared {
        let _ = std::fs::set_permissions(&reg.path, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        // Nobody, not even a client of the server's own uid, may read our
        // descriptors through /proc/SERVER/fd.
        sys::set_dumpable(false);
    }
    sys::park_on_sigbus();
    match Server::start(reg, &opts) {
        Ok(mut s) => {
            let code = s.run();
            drop(lock);
            code
        }
        Err(e) => fail(format!("cannot serve {}: {}", opts.dir.display(), e.name())),
    }
}

/// Creates the namespace directory if needed and refuses one that others may write.
fn prepare_dir(dir: &Path, shared: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let mode = if shared { 0o755 } else { 0o700 };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    let md = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if shared && (md.uid() != sys::geteuid() || md.mode() & 0o022 != 0) {
        return Err(format!(
            "{} must belong to the server's user (uid {}) and be writable by nobody else (it is uid {}, mode {:o}): clients must not be able to write any file in it",
            dir.display(),
            sys::geteuid(),
            md.uid(),
            md.mode() & 0o7777
        ));
    }
    Ok(())
}

impl Server {
    fn start(reg: Registry, opts: &Options) -> SysResult<Server> {
        // One descriptor per segment: the soft limit a program started us with
        // (often 1024) is not enough for shmmni segments.
        let (soft, hard) = sys::rlimit_nofile();
        if soft < hard {
            let _ = sys::set_rlimit_nofile(hard, hard);
        }
        let fd_limit = sys::rlimit_nofile().0.min(1 << 20) as usize;
        let path = crate::client::sock_path(&opts.dir);
        let _ = std::fs::remove_file(&path);
        let listen = sys::socket_unix(libc::SOCK_SEQPACKET)?;
        let reg_ino = sys::fstat(reg.fd.as_raw_fd())?.st_ino;
        let gen = reg.header().server_gen.get().wrapping_add(1).max(1);
        let own_ep = sys::epoll_create()?;
        let shared_ep = sys::epoll_create()?;
        let (death_r, death_w) = sys::pipe()?;
        sys::epoll_add(shared_ep.as_raw_fd(), death_r.as_raw_fd(), 0, proto::ev_data(proto::EV_SERVER, 0, 0))?;
        let inotify = sys::inotify_watch(&opts.dir, libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_DELETE | libc::IN_MOVED_FROM).ok();
        if let Some(i) = &inotify {
            sys::epoll_add(own_ep.as_raw_fd(), i.as_raw_fd(), libc::EPOLLIN as u32, TAG_INOTIFY)?;
        }
        let reg: &'static Registry = Box::leak(Box::new(reg));
        let mut s = Server {
            alive: None,
            reg,
            bg: Background::new(reg),
            dir: opts.dir.clone(),
            shared: opts.shared,
            auto: opts.auto,
            gen,
            listen,
            sock_ino: 0,
            reg_ino,
            own_ep,
            shared_ep,
            death_r,
            _death_w: death_w,
            inotify,
            conns: HashMap::new(),
            watches: HashMap::new(),
            fds: HashMap::new(),
            by_serial: HashMap::new(),
            made: HashMap::new(),
            seen_epoch: 0,
            unwatched: Vec::new(),
            fd_limit,
        };
        // Adopt first, listen after: a participant whose connection is accepted
        // may trust that every id it finds has its memory.
        s.adopt();
        s.bg.spawn();
        sys::bind(s.listen.as_raw_fd(), &path)?;
        let sock_mode = if opts.shared { 0o666 } else { 0o600 };
        let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(sock_mode));
        sys::listen(s.listen.as_raw_fd(), 4096)?;
        sys::set_nonblocking(s.listen.as_raw_fd(), true);
        s.sock_ino = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        sys::epoll_add(s.own_ep.as_raw_fd(), s.listen.as_raw_fd(), libc::EPOLLIN as u32, TAG_LISTEN)?;
        Ok(s)
    }

    // ------------------------------------------------------------- adoption

    /// Takes over the namespace: participants that died while no server watched
    /// are detached, live ones are watched by pidfd, and every segment's memory is
    /// found in a live participant (by inode) or the segment is removed whole.
    fn adopt(&mut self) {
        self.alive = Some(self.reg.hold_server_alive());
        let entries: Vec<(usize, i32, u32, u64)> = {
            let g = self.reg.lock();
            let h = g.hdr();
            // Publish ourselves; creators check the generation before using the pool.
            h.server_gen.set(self.gen);
            h.server_pid.set(sys::getpid());
            for e in h.pool.iter() {
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            }
            self.seen_epoch = h.destroy_epoch.atomic().load(Ordering::Acquire);
            g.used_procs().map(|p| (p, g.proc_entry(p).pid.get(), g.proc_entry(p).gen.get(), g.proc_entry(p).start.get())).collect()
        };
        // Which participants live, and what each maps (outside the lock: this reads
        // other processes' /proc).
        let mut alive: Vec<(usize, u32, i32, OwnedFd, Vec<u64>)> = Vec::new();
        let mut dead = Vec::new();
        for (p, pid, gen, start) in entries {
            let pidfd = sys::pidfd_open(pid).ok();
            match pidfd {
                Some(fd) if start == 0 || crate::process::start_time(pid) == start => alive.push((p, gen, pid, fd, mapped_inodes(pid))),
                _ => dead.push((p, gen)),
            }
        }
        let slots: Vec<(usize, u64, u64)> = {
            let g = self.reg.lock();
            let s = |i| g.reg.slot(i);
            (0..g.slot_hwm()).filter(|&i| s(i).is_used()).map(|i| (i, s(i).serial.get(), s(i).ino.get())).collect()
        };
        let pids: Vec<i32> = alive.iter().map(|a| a.2).collect();
        let found: Vec<(usize, u64, Option<OwnedFd>)> = slots.iter().map(|&(i, serial, ino)| (i, serial, recover_fd(&pids, ino))).collect();
        let mut g = self.reg.lock();
        for (p, gen) in dead {
            lifecycle::apply_death(&mut g, p, gen);
        }
        for (p, gen, _pid, pidfd, inodes) in alive {
            // Records of segments the process no longer maps (it exec'd): gone.
            let recs: Vec<(usize, u32)> = g.proc_recs(p).map(|r| (g.rec(r as usize).slot.get() as usize, g.rec(r as usize).count.get())).collect();
            for (slot, n) in recs {
                if !inodes.contains(&g.slot(slot).ino.get()) {
                    let serial = g.slot(slot).serial.get();
                    let pid = g.proc_entry(p).pid.get();
                    lifecycle::shm_close_frags(&mut g, p, slot, serial, n, pid);
                }
            }
            let n = pidfd.as_raw_fd();
            if sys::epoll_add(self.shared_ep.as_raw_fd(), n, libc::EPOLLIN as u32, proto::ev_data(proto::EV_PIDFD, p, gen)).is_ok()
                && sys::epoll_add(self.own_ep.as_raw_fd(), n, libc::EPOLLIN as u32, TAG_WATCH | n as u64).is_ok()
            {
                self.watches.insert((p, gen), pidfd);
            }
        }
        for (i, serial, fd) in found {
            let s = g.slot(i);
            if !s.is_used() || s.serial.get() != serial {
                continue;
            }
            match fd {
                Some(fd) => {
                    let n = fd.as_raw_fd();
                    s.set_server_fd(self.gen, serial, n);
                    self.fds.insert(n, fd);
                    self.by_serial.insert(serial, n);
                }
                // Nobody has its memory: the segment is gone whole, as after a
                // reboot (no id that shmget finds and shmat refuses).
                None => lifecycle::shm_destroy(&mut g, i),
            }
        }
        self.seen_epoch = g.hdr().destroy_epoch.atomic().load(Ordering::Acquire);
        g.hdr().released_epoch.set(self.seen_epoch);
        drop(g);
        self.refill_pool();
    }

    // ------------------------------------------------------------- main loop

    fn run(&mut self) -> i32 {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut last_sweep = Instant::now();
        let mut empty_since: Option<Instant> = None;
        let mut last_change = Instant::now();
        loop {
            let quiet = last_change.elapsed();
            let timeout = if quiet < Duration::from_millis(200) {
                ACTIVE_POLL_MS
            } else if quiet < Duration::from_secs(2) {
                20
            } else {
                200
            };
            let n = sys::epoll_wait(self.own_ep.as_raw_fd(), &mut events, timeout).unwrap_or(0);
            if n > 0 {
                last_change = Instant::now();
            }
            if !self.reg.intact() {
                // Truncated or overwritten: leave it as it is.
                return self.frozen();
            }
            let tags: Vec<u64> = events[..n].iter().map(|e| e.u64).collect();
            for tag in tags {
                match tag {
                    TAG_LISTEN => self.accept_all(),
                    t if t & TAG_WATCH != 0 => self.watch_fired((t & 0xffff_ffff) as RawFd),
                    TAG_INOTIFY => {
                        if let Some(i) = &self.inotify {
                            sys::drain(i.as_raw_fd());
                        }
                        if !self.dir_intact() {
                            return self.leave();
                        }
                    }
                    t if t & TAG_CONN != 0 => self.serve_conn((t & 0xffff_ffff) as RawFd),
                    _ => {}
                }
            }
            if self.sweep_changes() {
                last_change = Instant::now();
            }
            let since = last_sweep.elapsed();
            let looks_empty = self.reg.header().in_use.get() == 0;
            if since < Duration::from_secs(1) && !(self.auto && looks_empty && since >= Duration::from_millis(100)) {
                continue;
            }
            last_sweep = Instant::now();
            if !self.dir_intact() {
                return self.leave();
            }
            let mut g = self.reg.lock();
            self.sweep_full(&mut g);
            // Empty, and quiet: a creator removing what it creates (in_use is
            // mostly 0 then) keeps its server.
            let empty = g.hdr().in_use.get() == 0 && self.made.is_empty() && last_change.elapsed() >= LINGER;
            if !self.auto || !empty {
                empty_since = None;
            } else if empty_since.get_or_insert_with(Instant::now).elapsed() >= LINGER {
                // Leave before letting go of the lock: the socket goes first, so a
                // creator that comes next finds no server and starts one.
                let _ = std::fs::remove_file(crate::client::sock_path(&self.dir));
                for e in g.hdr().pool.iter() {
                    e.taken.store(0, Ordering::Release);
                    e.fd.store(0, Ordering::Release);
                }
                g.hdr().server_pid.set(0);
                self.alive = None;
                drop(g);
                return 0;
            }
        }
    }

    /// Whether the namespace directory still holds our registry and socket.
    fn dir_intact(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: PathBuf| std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
        ino(self.dir.join("registry")) == self.reg_ino && ino(crate::client::sock_path(&self.dir)) == self.sock_ino
    }

    /// The registry was truncated or overwritten: nothing more is written to it
    /// (clients refuse it, naming the problem).
    fn frozen(&mut self) -> i32 {
        // Exiting would make the kernel mark our liveness mutex in the file
        // (robust futex "owner died"): stay, touching nothing, until the
        // directory goes.
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if !self.dir.join("registry").exists() || !self.dir.exists() {
                return 1;
            }
        }
    }

    /// The namespace directory was removed: its memory goes with us.
    fn leave(&mut self) -> i32 {
        self.reg.header().server_pid.set(0);
        0
    }

    fn accept_all(&mut self) {
        while let Ok(fd) = sys::accept(self.listen.as_raw_fd()) {
            sys::set_passcred(fd.as_raw_fd());
            let n = fd.as_raw_fd();
            let uid = sys::peercred(n).map(|c| c.uid).unwrap_or(u32::MAX);
            // One user cannot take every descriptor the server has from the others.
            if self.shared && uid != 0 && self.conns.values().filter(|c| c.uid == uid).count() >= CONNS_PER_UID {
                continue;
            }
            if sys::epoll_add(self.own_ep.as_raw_fd(), n, libc::EPOLLIN as u32, TAG_CONN | n as u64).is_ok() {
                self.conns.insert(n, ConnState { _fd: fd, me: None, recs: Vec::new(), watched: false, uid });
            }
        }
    }

    /// Applies the deaths the shared epoll instance reports, each confirmed on the
    /// server's own descriptor: anyone who holds the instance can add items to it,
    /// so a report counts only when our end of that participant's connection has
    /// hung up, or its pidfd says it exited. (The server itself learns of deaths
    /// from its own epoll instance; this serves SYNC.)
    fn apply_deaths(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let n = sys::epoll_wait(self.shared_ep.as_raw_fd(), &mut events, 0).unwrap_or(0);
        let reported: Vec<(usize, u32)> = events[..n]
            .iter()
            .filter_map(|e| {
                let d = e.u64;
                match proto::ev_parse(d) {
                    (proto::EV_CONN | proto::EV_PIDFD, p, g) => Some((p, g)),
                    _ => None,
                }
            })
            .collect();
        for me in reported {
            if let Some(fd) = self.watches.get(&me).map(|f| f.as_raw_fd()) {
                self.watch_fired(fd);
            } else if let Some(fd) = self.conns.iter().find(|(_, c)| c.me == Some(me)).map(|(&fd, _)| fd) {
                if sys::hung_up(fd) {
                    // What it sent before it died comes first (an ADOPT carries
                    // the watch of a child it registered); its EOF closes it.
                    self.serve_conn(fd);
                    self.close_conn(fd);
                }
            }
        }
    }

    /// A pidfd watch became readable: its participant exited.
    fn watch_fired(&mut self, fd: RawFd) {
        let Some(me) = self.watches.iter().find(|(_, f)| f.as_raw_fd() == fd).map(|(&me, _)| me) else { return };
        if !sys::poll_in(fd, 0) {
            return;
        }
        self.watches.remove(&me);
        let mut g = self.reg.lock();
        lifecycle::apply_death(&mut g, me.0, me.1);
    }

    fn close_conn(&mut self, fd: RawFd) {
        if let Some(c) = self.conns.remove(&fd) {
            self.abandon_made(fd);
            sys::epoll_del(self.own_ep.as_raw_fd(), fd);
            if let (Some((p, gen)), true) = (c.me, c.watched) {
                // Closing it also ends its registration in the shared instance;
                // the death is applied first (the kernel may not have reported it
                // there yet).
                let mut g = self.reg.lock();
                lifecycle::apply_death(&mut g, p, gen);
            }
        }
    }

    /// Handles every message waiting on connection `fd`.
    fn serve_conn(&mut self, fd: RawFd) {
        let mut buf = [0u8; proto::MSG_SIZE + 8];
        for _ in 0..64 {
            let r = match sys::recv_with_fds(fd, &mut buf, libc::MSG_DONTWAIT) {
                Ok(r) if r.len == 0 => return self.close_conn(fd),
                Ok(r) => r,
                Err(Errno(libc::EAGAIN)) => return,
                Err(_) => return self.close_conn(fd),
            };
            let Some(m) = Msg::parse(&buf[..r.len]) else {
                return self.close_conn(fd); // not a shmshim peer: drop it
            };
            let reply = self.handle(fd, m, r.fds, r.cred);
            if let Some((reply, fds)) = reply {
                let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                // Never wait for a client: one that does not read its replies
                // loses its connection.
                if sys::send_with_fds(fd, &reply.bytes(), &raw, libc::MSG_DONTWAIT).is_err() {
                    return self.close_conn(fd);
                }
            }
        }
    }

    /// One request; returns the reply (None: no reply is due).
    fn handle(&mut self, conn: RawFd, m: Msg, mut fds: Vec<OwnedFd>, cred: Option<libc::ucred>) -> Option<(Msg, Vec<OwnedFd>)> {
        let err = |e: Errno| Some((Msg::reply(m.op, e.0), Vec::new()));
        let Some(cred) = cred.filter(|c| c.pid > 0) else {
            // Every request carries the kernel's word on who sent it.
            return err(Errno(libc::EPERM));
        };
        match m.op {
            proto::HELLO => Some(self.hello(conn, &m, cred).map(|r| (r, self.hello_fds())).unwrap_or_else(|e| (Msg::reply(m.op, e.0), Vec::new()))),
            proto::FORK_REC => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if c.recs.len() < 4096 {
                        c.recs.push((m.a as usize, m.b, m.c as u32));
                    }
                }
                None
            }
            proto::ADOPT if !self.shared => {
                // A private namespace's fork: the parent registered the child.
                let end = fds.pop()?;
                self.adopt_conn(end, (m.a as usize, m.b as u32), false);
                None
            }
            proto::FORK if self.shared => {
                let end = fds.pop()?;
                match self.fork_child(conn, end, cred) {
                    Ok(r) => Some((r, Vec::new())),
                    Err(e) => err(e),
                }
            }
            proto::NAMED => {
                self.named(conn, m.a as RawFd, m.b, m.c as usize);
                None
            }
            proto::MAKE => match self.make(conn, m.a as u32, m.b) {
                Ok((r, fd)) => Some((r, vec![fd])),
                Err(e) => err(e),
            },
            proto::GET => match self.get(m.a as usize, m.b, m.c != 0, cred) {
                Ok(fd) => Some((Msg::reply(m.op, 0), vec![fd])),
                Err(e) => err(e),
            },
            proto::REFILL => {
                // Also the wake-up for a removed segment's memory.
                self.sweep_changes();
                None
            }
            proto::SYNC => {
                self.apply_deaths();
                self.sweep_changes_now(true);
                Some((Msg::reply(m.op, 0), Vec::new()))
            }
            proto::CHECK => {
                self.apply_deaths();
                let mut r = Msg::reply(m.op, 0);
                if let Err(why) = self.check() {
                    r.err = libc::EIO as u32;
                    r.set_text(&why);
                }
                Some((r, Vec::new()))
            }
            proto::SHMGET | proto::SHMAT | proto::SHMAT_DONE | proto::VM | proto::SHMCTL | proto::SYSCTL if self.shared => {
                let me = self.conns.get(&conn).and_then(|c| c.me);
                match self.shared_op(&m, me, cred) {
                    Ok(r) => Some(r),
                    Err(e) => err(e),
                }
            }
            _ => err(Errno(libc::EINVAL)),
        }
    }

    fn hello_fds(&self) -> Vec<OwnedFd> {
        [&self.shared_ep, &self.death_r].iter().filter_map(|f| sys::dup(f.as_raw_fd()).ok()).collect()
    }

    /// HELLO: registers the connection's process (again, after a server restart,
    /// under the entry it had).
    fn hello(&mut self, conn: RawFd, m: &Msg, cred: libc::ucred) -> SysResult<Msg> {
        if self.conns.get(&conn).and_then(|c| c.me).is_some() {
            return Err(Errno(libc::EINVAL));
        }
        let pid = cred.pid;
        let recs = self.conns.get_mut(&conn).map(|c| std::mem::take(&mut c.recs)).unwrap_or_default();
        let mut g = self.reg.lock();
        let old = (m.b > 0).then(|| (m.b as usize - 1, m.c as u32));
        let kept = old.filter(|&(p, gen)| p < g.proc_hwm() && g.proc_entry(p).pid.get() == pid && g.proc_entry(p).gen.get() == gen);
        let me = match kept {
            Some(me) => {
                // Watched by pidfd since this server adopted it: the connection
                // takes over.
                self.watches.remove(&me);
                me
            }
            None => {
                // Announced attaches count only where the process really maps the
                // segment (read from its /proc/PID/maps): nobody inflates another
                // user's shm_nattch by announcing attaches it does not have.
                let inodes = if recs.is_empty() { Vec::new() } else { mapped_inodes(pid) };
                let me = g.claim_proc(pid, m.d)?;
                for (slot, serial, n) in recs {
                    let s = g.slot(slot);
                    if s.is_used() && s.serial.get() == serial && n > 0 && inodes.contains(&s.ino.get()) {
                        let _ = g.rec_add(me.0, slot, n.min(MAX_MAP_COUNT));
                    }
                }
                me
            }
        };
        drop(g);
        self.watch_conn(conn, me)?;
        let mut r = Msg::reply(m.op, 0);
        (r.a, r.b, r.c) = (me.0 as u64, me.1 as u64, self.gen);
        Ok(r)
    }

    /// Registers connection `conn` as participant `me` in the shared instance.
    fn watch_conn(&mut self, conn: RawFd, me: (usize, u32)) -> SysResult<()> {
        let c = self.conns.get_mut(&conn).ok_or(Errno(libc::EINVAL))?;
        sys::epoll_add(self.shared_ep.as_raw_fd(), conn, libc::EPOLLRDHUP as u32, proto::ev_data(proto::EV_CONN, me.0, me.1))?;
        c.me = Some(me);
        c.watched = true;
        Ok(())
    }

    /// Takes the server's end of a fork child's connection. In a private namespace
    /// the parent registered it in the shared instance already (`registered`
    /// false): the registration stays as long as this descriptor lives.
    fn adopt_conn(&mut self, end: OwnedFd, me: (usize, u32), registered: bool) {
        let n = end.as_raw_fd();
        sys::set_passcred(n);
        sys::set_nonblocking(n, true);
        if sys::epoll_add(self.own_ep.as_raw_fd(), n, libc::EPOLLIN as u32, TAG_CONN | n as u64).is_err() {
            return;
        }
        let uid = sys::peercred(n).map(|c| c.uid).unwrap_or(u32::MAX);
        self.conns.insert(n, ConnState { _fd: end, me: Some(me), recs: Vec::new(), watched: true, uid });
        if registered {
            let _ = sys::epoll_add(self.shared_ep.as_raw_fd(), n, libc::EPOLLRDHUP as u32, proto::ev_data(proto::EV_CONN, me.0, me.1));
        }
    }

    /// FORK in a shared namespace: a new entry for the child, with the attaches it
    /// inherits (announced by FORK_REC), counted before the parent forks (S118).
    fn fork_child(&mut self, conn: RawFd, end: OwnedFd, cred: libc::ucred) -> SysResult<Msg> {
        let parent = self.conns.get(&conn).and_then(|c| c.me).ok_or(Errno(libc::EINVAL))?;
        let recs = self.conns.get_mut(&conn).map(|c| std::mem::take(&mut c.recs)).unwrap_or_default();
        let mut g = self.reg.lock();
        let me = g.claim_proc(cred.pid, 0)?;
        for (slot, serial, n) in recs {
            // Only what the parent has may be inherited.
            if n > 0 && g.rec_count(parent.0, slot) >= n && g.slot(slot).serial.get() == serial {
                lifecycle::shm_open_frags(&mut g, me.0, slot, serial, n, cred.pid);
            }
        }
        drop(g);
        self.adopt_conn(end, me, true);
        let mut r = Msg::reply(proto::FORK, 0);
        (r.a, r.b) = (me.0 as u64, me.1 as u64);
        Ok(r)
    }

    /// Whether the server may hold one more memfd and still keep descriptors for
    /// connections and replies (and, in a private namespace, a full pool).
    fn room_for_memfd(&self) -> bool {
        let pool = if self.shared { 0 } else { crate::registry::POOL_SIZE };
        self.fds.len() + self.made.len() + self.conns.len() + FD_RESERVE + pool < self.fd_limit
    }

    /// A new memfd of `len` bytes with `flags` (MFD_HUGETLB and its size code) and
    /// its inode; ENFILE where the server cannot hold another descriptor (the
    /// shmget that asked fails, nothing created is lost later), ENOMEM otherwise.
    fn new_memfd(&self, flags: u32, len: u64) -> SysResult<(OwnedFd, u64)> {
        if !self.room_for_memfd() {
            return Err(Errno(libc::ENFILE));
        }
        let flags = (flags & (libc::MFD_HUGETLB | (0x3f << 26))) | libc::MFD_CLOEXEC;
        let fd = sys::memfd_create(c"SYSV", flags).map_err(|e| Errno(if matches!(e.0, libc::EMFILE | libc::ENFILE) { libc::ENFILE } else { libc::ENOMEM }))?;
        sys::set_size(fd.as_raw_fd(), len).map_err(|_| Errno(libc::ENOMEM))?;
        let ino = sys::fstat(fd.as_raw_fd())?.st_ino;
        crate::process::set_tag(fd.as_raw_fd(), ino);
        Ok((fd, ino))
    }

    /// MAKE: a memfd the server holds from now on.
    fn make(&mut self, conn: RawFd, flags: u32, len: u64) -> SysResult<(Msg, OwnedFd)> {
        let (fd, ino) = self.new_memfd(flags, len)?;
        let reply_fd = sys::dup(fd.as_raw_fd()).map_err(|_| Errno(libc::ENFILE))?;
        let n = fd.as_raw_fd();
        self.fds.insert(n, fd);
        self.made.insert(n, conn);
        let mut r = Msg::reply(proto::MAKE, 0);
        (r.a, r.b) = (n as u64, ino);
        Ok((r, reply_fd))
    }

    /// NAMED: the creator published segment `serial` in `slot` with the memfd we
    /// made for it as `fd` (or the segment is gone already: the memfd goes too).
    fn named(&mut self, conn: RawFd, fd: RawFd, serial: u64, slot: usize) {
        if self.made.get(&fd) != Some(&conn) {
            return;
        }
        self.made.remove(&fd);
        let s = self.reg.slot(slot);
        if s.is_used() && s.serial.get() == serial && s.server_fd_of(self.gen, serial) == Some(fd) {
            self.by_serial.insert(serial, fd);
        } else {
            self.fds.remove(&fd);
        }
    }

    /// Memfds made for connection `conn` that no segment names: it died between
    /// MAKE and publication.
    fn abandon_made(&mut self, conn: RawFd) {
        let mine: Vec<RawFd> = self.made.iter().filter(|(_, &c)| c == conn).map(|(&fd, _)| fd).collect();
        if mine.is_empty() {
            return;
        }
        let _g = self.reg.lock();
        for fd in mine {
            self.made.remove(&fd);
            let named = (0..self.reg.slot_hwm()).map(|i| self.reg.slot(i)).find(|s| s.is_used() && s.server_fd_of(self.gen, s.serial.get()) == Some(fd));
            match named {
                Some(s) => {
                    self.by_serial.insert(s.serial.get(), fd);
                }
                None => {
                    self.fds.remove(&fd);
                }
            }
        }
    }

    /// The memfd held for segment `serial` in `slot`.
    fn held(&self, slot: usize, serial: u64) -> Option<RawFd> {
        let s = self.reg.slot(slot);
        if !s.is_used() || s.serial.get() != serial {
            return None;
        }
        let n = *self.by_serial.get(&serial).or(s.server_fd_of(self.gen, serial).as_ref())?;
        self.fds.get(&n).filter(|f| sys::fstat(f.as_raw_fd()).map(|st| st.st_ino == s.ino.get()).unwrap_or(false)).map(|f| f.as_raw_fd())
    }

    /// A descriptor with the access the caller granted (it checked the
    /// permission): read-write (`write`), or a read-only reopen.
    fn hand_out(&self, fd: RawFd, write: bool) -> SysResult<OwnedFd> {
        if write {
            sys::dup(fd)
        } else {
            crate::process::reopen(fd, libc::O_RDONLY)
        }
    }

    /// GET: a segment's descriptor for a participant that cannot open ours.
    fn get(&mut self, slot: usize, serial: u64, rdonly: bool, cred: libc::ucred) -> SysResult<OwnedFd> {
        // The memfd may be one the background thread made and we do not own yet.
        self.take_made();
        let mut creds = Creds::of_peer(cred.pid, cred.uid, cred.gid)?;
        let _g = self.reg.lock();
        let fd = self.held(slot, serial).ok_or(Errno(libc::EIDRM))?;
        if !creds.ipcperms(self.reg.slot(slot), if rdonly { 0o444 } else { 0o666 }) {
            return Err(Errno(libc::EACCES)); // S67
        }
        // A pooled memfd is sized by its first mapping: size it before handing
        // out a descriptor that may not be able to.
        let s = self.reg.slot(slot);
        if let (Ok(st), false) = (sys::fstat(fd), s.flags.get() & crate::registry::F_HUGETLB != 0) {
            crate::process::sized(fd, &st, s.segsz.get());
        }
        self.hand_out(fd, !rdonly)
    }

    /// The four calls of a shared namespace's clients, decided here on the
    /// requester's credentials with the same lifecycle steps a private namespace's
    /// participants run themselves.
    fn shared_op(&mut self, m: &Msg, me: Option<(usize, u32)>, cred: libc::ucred) -> SysResult<(Msg, Vec<OwnedFd>)> {
        let mut creds = Creds::of_peer(cred.pid, cred.uid, cred.gid)?;
        let mut r = Msg::reply(m.op, 0);
        match m.op {
            proto::SHMGET => {
                let p = GetParams { key: m.a as u32 as i32, size: m.b as usize, flg: m.c as u32 as i32 };
                r.a = self.shmget(&mut creds, &p)? as u32 as u64;
                Ok((r, Vec::new()))
            }
            proto::SHMAT => {
                let me = me.ok_or(Errno(libc::EINVAL))?;
                let mut g = self.reg.lock();
                // Only a private namespace's participants zero-fill, so FILL_WAIT
                // cannot come here; were it to, the client is not kept waiting.
                let info = lifecycle::shmat_hold(&mut g, &mut creds, me.0, m.a as u32 as i32, m.b as i32).map_err(|e| match e.0 {
                    lifecycle::FILL_WAIT => Errno(libc::ENOMEM),
                    _ => e,
                })?;
                drop(g);
                let write = m.b as i32 & 0o222 != 0;
                let fd = self.held(info.slot, info.serial).ok_or(Errno(libc::EIDRM)).and_then(|fd| self.hand_out(fd, write));
                let fd = match fd {
                    Ok(fd) => fd,
                    Err(e) => {
                        let mut g = self.reg.lock();
                        lifecycle::shmat_done(&mut g, me.0, info.slot, info.serial, false, cred.pid);
                        return Err(e);
                    }
                };
                (r.a, r.b, r.c, r.d, r.e) = (info.slot as u64, info.serial, info.ino, info.map_len as u64, info.segsz as u64 | (info.noreserve as u64) << 63);
                Ok((r, vec![fd]))
            }
            proto::SHMAT_DONE => {
                let me = me.ok_or(Errno(libc::EINVAL))?;
                let mut g = self.reg.lock();
                // Only a hold this participant has can be completed or dropped.
                if g.rec_count(me.0, m.a as usize) > 0 {
                    lifecycle::shmat_done(&mut g, me.0, m.a as usize, m.b, m.c != 0, cred.pid);
                }
                Ok((r, Vec::new()))
            }
            proto::VM => {
                let me = me.ok_or(Errno(libc::EINVAL))?;
                let mut g = self.reg.lock();
                let (slot, serial) = (m.a as usize, m.b);
                let have = g.rec_count(me.0, slot);
                // Splits of an attach this participant has (a process has at most
                // vm.max_map_count VMAs), closes of fragments it has.
                let opens = if have > 0 { (m.c as u32).min(MAX_MAP_COUNT.saturating_sub(have)) } else { 0 };
                let closes = (m.d as u32).min(have + opens);
                lifecycle::book(&mut g, me.0, slot, serial, opens, closes, cred.pid);
                Ok((r, Vec::new()))
            }
            proto::SYSCTL => {
                let which = lifecycle::Sysctl::from_code(m.a as u32).ok_or(Errno(libc::EINVAL))?;
                if !lifecycle::sysctl_may_write(&mut creds, which) {
                    return Err(Errno(libc::EACCES));
                }
                let mut g = self.reg.lock();
                lifecycle::sysctl_write(&mut g, which, m.b as i64);
                Ok((r, Vec::new()))
            }
            proto::SHMCTL => {
                let setbuf = m.data;
                let mut g = self.reg.lock();
                let fds = &self.fds;
                let by_serial = &self.by_serial;
                let rss = |s: &crate::registry::Slot| {
                    by_serial
                        .get(&s.serial.get())
                        .and_then(|n| fds.get(n))
                        .and_then(|f| sys::fstat(f.as_raw_fd()).ok())
                        .map(|st| st.st_blocks as u64 * 512 / 4096)
                        .unwrap_or(0)
                };
                let (ret, out) = lifecycle::shmctl_locked(&mut g, &mut creds, m.a as u32 as i32, m.b as u32 as i32, &setbuf, &rss)?;
                r.a = ret as u32 as u64;
                if let Some((bytes, len)) = out {
                    r.data = bytes;
                    r.c = len as u64;
                }
                Ok((r, Vec::new()))
            }
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// shmget on a client's behalf (shared namespace).
    fn shmget(&mut self, creds: &mut Creds, p: &GetParams) -> SysResult<i32> {
        let mut g = self.reg.lock();
        if p.key != 0 {
            match g.find_key(p.key) {
                Some(slot) => return lifecycle::lookup_checks(g.live(), creds, slot, p),
                None if p.flg & shm::IPC_CREAT == 0 => return Err(Errno(libc::ENOENT)), // S32
                None => {}
            }
        }
        let plan = lifecycle::newseg_plan(&g, creds, p)?;
        let (fd, ino) = self.new_memfd(plan.mfd_flags, plan.file_len)?;
        let n = fd.as_raw_fd();
        let (id, _, serial) = lifecycle::newseg_publish(&mut g, creds, p, &plan, ino, Holder::Server { fd: n, gen: self.gen })?;
        self.fds.insert(n, fd);
        self.by_serial.insert(serial, n);
        Ok(id)
    }

    // ------------------------------------------------------------- bookkeeping

    /// Without the lock (unless the ring overflowed: then a full sweep under it):
    /// file pooled memfds creators took, close the memfds of
    /// segments destroyed since the last look (from the header's ring), refill the
    /// pool. O(pool + changes). True if anything changed.
    fn sweep_changes(&mut self) -> bool {
        self.sweep_changes_now(false)
    }

    /// Follows claims of pooled memfds and destructions; `now`: the memory of
    /// destroyed segments is released before this returns.
    fn sweep_changes_now(&mut self, now: bool) -> bool {
        self.take_made();
        let h = self.reg.header();
        let mut changed = false;
        let mut freed = Vec::new();
        for e in h.pool.iter() {
            let fd = e.fd.load(Ordering::Acquire);
            let taken = e.taken.load(Ordering::Acquire);
            if fd < 0 && taken != 0 {
                if !self.reg.intact() {
                    return changed;
                }
                self.by_serial.insert(taken, -fd);
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
                changed = true;
            }
        }
        for (serial, fd) in std::mem::take(&mut self.bg.lock().claimed) {
            self.by_serial.insert(serial, fd);
            changed = true;
        }
        let epoch = h.destroy_epoch.atomic().load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            changed = true;
            if epoch.wrapping_sub(self.seen_epoch) > crate::registry::DESTROYED_RING as u64 {
                let mut g = self.reg.lock();
                self.sweep_full(&mut g);
            } else {
                for e in self.seen_epoch..epoch {
                    let serial = h.destroyed[e as usize % crate::registry::DESTROYED_RING].atomic().load(Ordering::Acquire);
                    if let Some(fd) = self.by_serial.remove(&serial) {
                        freed.extend(self.fds.remove(&fd));
                        self.made.remove(&fd);
                    }
                }
                self.seen_epoch = epoch;
            }
        }
        if changed || now {
            self.release(freed);
        }
        if h.refill_asked.get() != 0 || changed {
            self.refill_pool();
        }
        changed
    }

    /// Keeps the pool of empty memfds full (private namespaces; empty memfds cost
    /// no memory).
    fn refill_pool(&mut self) {
        if self.shared {
            return;
        }
        let h = self.reg.header();
        let asked = h.refill_asked.atomic().swap(0, Ordering::AcqRel) != 0;
        self.take_made();
        // The thread is woken when a quarter of the pool is gone (or a creator
        // asked), not at every creation: each wake-up takes a CPU from a creator.
        let left = h.pool_filled.get().saturating_sub(h.pool_taken.get());
        if !asked && left >= (crate::registry::POOL_SIZE * 3 / 4) as u64 {
            return;
        }
        // The descriptors left after those kept for connections and replies,
        // less a pool's worth the thread may have made since it was counted.
        let want = self.fd_limit.saturating_sub(self.fds.len() + self.made.len() + self.conns.len() + FD_RESERVE + crate::registry::POOL_SIZE);
        if want == 0 {
            return;
        }
        let mut st = self.bg.lock();
        if st.absent {
            // No background thread: make them here.
            drop(st);
            for e in h.pool.iter() {
                if e.fd.load(Ordering::Acquire) != 0 || e.taken.load(Ordering::Acquire) != 0 {
                    continue;
                }
                let Ok((fd, ino)) = self.new_memfd(0, 0) else { break };
                let n = fd.as_raw_fd();
                self.fds.insert(n, fd);
                e.ino.store(ino, Ordering::Release);
                e.fd.store(n, Ordering::Release);
                h.pool_filled.atomic().fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        st.fill = want;
        st.kick = true;
        drop(st);
        self.bg.wake.notify_one();
    }

    /// Takes ownership of the memfds the background thread made.
    fn take_made(&mut self) {
        let made = std::mem::take(&mut self.bg.lock().made);
        for fd in made {
            self.fds.insert(fd.as_raw_fd(), fd);
        }
    }

    /// Closes descriptors of destroyed segments (the main thread does it: the
    /// background thread's CPU time goes to the pool) and records how far the
    /// memory of destroyed segments is released.
    fn release(&mut self, fds: Vec<OwnedFd>) {
        drop(fds);
        if !self.reg.intact() {
            return;
        }
        self.reg.header().released_epoch.atomic().fetch_max(self.seen_epoch, Ordering::AcqRel);
    }

    /// Under the lock, once a second: rebuild the bookkeeping from the registry,
    /// closing whatever no slot, pool entry or pending creation names.
    fn sweep_full(&mut self, g: &mut crate::registry::RegGuard) {
        self.take_made();
        self.reap_unwatched(g);
        let h = g.hdr();
        let mut named = std::collections::HashSet::new();
        self.by_serial.clear();
        for i in 0..=h.max_idx.get().max(-1) as isize {
            let s = g.reg.slot(i as usize);
            if s.state.get() != SLOT_USED {
                continue;
            }
            if let Some(fd) = s.server_fd_of(self.gen, s.serial.get()).filter(|fd| self.fds.contains_key(fd)) {
                named.insert(fd);
                self.made.remove(&fd);
                self.by_serial.insert(s.serial.get(), fd);
            }
        }
        // No creator is mid-claim while we hold the lock: a claim without a serial
        // was abandoned and goes back to the pool.
        for e in h.pool.iter() {
            let fd = e.fd.load(Ordering::Acquire);
            let taken = e.taken.load(Ordering::Acquire);
            if fd != 0 && self.fds.contains_key(&fd.abs()) && (taken == 0 || fd > 0) {
                named.insert(fd.abs());
                e.fd.store(fd.abs(), Ordering::Release);
            } else if fd < 0 && taken != 0 && self.fds.contains_key(&-fd) {
                named.insert(-fd);
                self.by_serial.insert(taken, -fd);
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            } else {
                e.taken.store(0, Ordering::Release);
                e.fd.store(0, Ordering::Release);
            }
        }
        self.made.retain(|fd, _| !named.contains(fd));
        for fd in self.made.keys() {
            named.insert(*fd);
        }
        self.fds.retain(|fd, _| named.contains(fd));
        let avail = h.pool.iter().filter(|e| e.fd.load(Ordering::Acquire) > 0).count() as u64;
        h.pool_filled.set(h.pool_taken.get() + avail);
        self.seen_epoch = h.destroy_epoch.atomic().load(Ordering::Acquire);
        self.release(Vec::new());
    }

    /// `shmshim check`: the registry's invariants, and that the memory of every
    /// segment is held (no id whose memory is gone).
    fn check(&mut self) -> Result<(), String> {
        self.take_made();
        let g = self.reg.lock();
        g.check_invariants()?;
        for i in 0..g.slot_hwm() {
            let s = g.reg.slot(i);
            if s.is_used() && self.held(i, s.serial.get()).is_none() && !self.pooled_for(s.serial.get()) {
                return Err(format!("slot {i} (key {:#x}): the server does not hold its memory (a ghost: shmat would fail)", s.key.get() as u32));
            }
        }
        for p in g.used_procs() {
            let gen = g.proc_entry(p).gen.get();
            if !self.is_watched(p, gen) && g.proc_entry(p).rec_head.get() != crate::registry::NIL {
                return Err(format!("proc entry {p} (pid {}): counts attaches but nobody watches for its death", g.proc_entry(p).pid.get()));
            }
        }
        Ok(())
    }

    /// Entries nobody watches and that count nothing, seen so at two sweeps in a
    /// row: a participant killed while registering a fork child, before it handed
    /// the child's connection over. (Nothing else is unwatched for that long.)
    fn reap_unwatched(&mut self, g: &mut crate::registry::RegGuard) {
        let unwatched: Vec<(usize, u32)> = g
            .used_procs()
            .map(|p| (p, g.proc_entry(p).gen.get()))
            .filter(|&(p, gen)| g.proc_entry(p).rec_head.get() == crate::registry::NIL && !self.is_watched(p, gen))
            .collect();
        for &(p, gen) in &unwatched {
            if self.unwatched.contains(&(p, gen)) {
                lifecycle::apply_death(g, p, gen);
            }
        }
        self.unwatched = unwatched;
    }

    fn is_watched(&self, p: usize, gen: u32) -> bool {
        self.watches.contains_key(&(p, gen)) || self.conns.values().any(|c| c.me == Some((p, gen)))
    }

    fn pooled_for(&self, serial: u64) -> bool {
        self.reg.header().pool.iter().any(|e| e.taken.load(Ordering::Acquire) == serial)
    }
}

/// The inodes of the memfds process `pid` maps (for its attach records).
fn mapped_inodes(pid: i32) -> Vec<u64> {
    let Some(maps) = sys::read_small(&format!("/proc/{pid}/maps")) else { return Vec::new() };
    maps.lines().filter(|l| l.contains("/memfd:SYSV")).filter_map(|l| l.split_whitespace().nth(4)?.parse().ok()).collect()
}

/// Looks for the memfd with inode `ino` among `pids`' descriptors and mappings.
fn recover_fd(pids: &[i32], ino: u64) -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    for &pid in pids {
        for sub in ["fd", "map_files"] {
            let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/{sub}")) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                if std::fs::metadata(&path).map(|m| m.ino() == ino).unwrap_or(false) {
                    if let Ok(fd) = sys::open(&sys::cstr(&path), libc::O_RDWR, 0) {
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
