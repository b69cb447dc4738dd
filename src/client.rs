//! A participant's side of the server protocol (`proto`): connecting (starting the
//! server of a private namespace when none answers), registering with HELLO,
//! applying deaths the kernel has signalled, and requests.
//!
//! Timeouts: every wait for the server is bounded ([`REPLY_TIMEOUT`]); a stopped or
//! dead server makes the calls that need it fail with a kernel errno, never hang.

use crate::process::{self, Conn, HeldFd, Local, Namespace, EPFD, LOCAL};
use crate::proto::{self, Msg};
use crate::sys::{self, Errno, SysResult};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a call waits for its server's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call that only observes waits for another process: for an update
/// in progress (a process's first observation), for room in a full backlog.
const SETTLE: Duration = Duration::from_millis(100);
/// How long a call waits for a newly started server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);

pub fn sock_path(dir: &Path) -> PathBuf {
    dir.join("server.sock")
}

/// Sends `m` (with `fds`) on `sock` and waits for the reply.
pub fn roundtrip(sock: RawFd, m: &Msg, fds: &[RawFd]) -> SysResult<(Msg, Vec<OwnedFd>)> {
    sys::send_with_fds(sock, &m.bytes(), fds, libc::MSG_DONTWAIT).map_err(|e| if e.0 == libc::EAGAIN { Errno(libc::ENOMEM) } else { e })?;
    wait_reply(sock, m.op, REPLY_TIMEOUT)
}

/// Waits up to `wait` for the reply to operation `op` on `sock`.
fn wait_reply(sock: RawFd, op: u32, wait: Duration) -> SysResult<(Msg, Vec<OwnedFd>)> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; proto::MSG_SIZE + 8];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !sys::poll_in(sock, left.as_millis() as i32) {
            return Err(Errno(libc::ETIMEDOUT));
        }
        let r = sys::recv_with_fds(sock, &mut buf, libc::MSG_DONTWAIT);
        match r {
            Ok(r) if r.len == 0 => return Err(Errno(libc::ECONNRESET)),
            Ok(r) => {
                let reply = Msg::parse(&buf[..r.len]).ok_or(Errno(libc::EIO))?;
                if reply.op != op {
                    continue; // not ours (a stale reply): keep waiting
                }
                if reply.err != 0 {
                    return Err(Errno(reply.err as i32));
                }
                return Ok((reply, r.fds));
            }
            Err(Errno(libc::EAGAIN)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The errno a call reports when the server it needs does not answer.
pub fn unavailable(e: Errno) -> Errno {
    match e.0 {
        libc::ENOMEM | libc::ENOSPC | libc::ENFILE | libc::EACCES | libc::EPERM | libc::EINVAL | libc::EIDRM | libc::ENOENT | libc::EEXIST | libc::EFAULT => e,
        _ => Errno(libc::ENOMEM),
    }
}

/// One connection attempt that cannot wait on the server: a listening socket
/// whose backlog is full (a stopped server, a flood of connections) is retried
/// until `deadline`, then ENOMEM. The socket returned is blocking.
fn try_connect(path: &Path, deadline: Instant) -> SysResult<OwnedFd> {
    let mut delay = Duration::from_micros(100);
    loop {
        let s = sys::socket_unix(libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK)?;
        match sys::connect(s.as_raw_fd(), path) {
            Ok(()) => {
                sys::set_nonblocking(s.as_raw_fd(), false);
                return Ok(s);
            }
            Err(Errno(libc::EAGAIN)) if Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Err(Errno(libc::EAGAIN)) => return Err(Errno(libc::ENOMEM)),
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the namespace's server, starting one (private namespaces) when
/// nobody listens; a full backlog is waited for at most `wait`.
fn connect(ns: &Namespace, wait: Duration) -> SysResult<OwnedFd> {
    let path = sock_path(&ns.dir);
    match try_connect(&path, Instant::now() + wait) {
        Ok(s) => return Ok(s),
        Err(Errno(libc::ECONNREFUSED | libc::ENOENT)) if !ns.reg.is_shared() => {}
        Err(Errno(libc::ECONNREFUSED | libc::ENOENT)) => {
            eprintln!("shmshim: the shared namespace {} has no server: start it with `shmshim serve --dir {} --shared`", ns.dir.display(), ns.dir.display());
            return Err(Errno(libc::ENOSYS));
        }
        Err(e) => return Err(e),
    }
    spawn(&ns.dir)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut delay = Duration::from_micros(200);
    loop {
        match try_connect(&path, deadline) {
            Ok(s) => return Ok(s),
            Err(Errno(libc::ECONNREFUSED | libc::ENOENT)) if Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Err(_) => return Err(Errno(libc::ENOMEM)),
        }
    }
}

/// Makes sure this process is registered with a live server: connected, HELLO
/// answered, the shared epoll instance at hand. A child of a raw fork (it finds
/// its parent's registration) and a process whose connection the program closed
/// register anew; their attaches are announced so they count (S118).
pub fn ensure_conn(local: &mut Local, ns: &Namespace) -> SysResult<(usize, u32)> {
    if let Some(me) = registered(local, &ns.reg) {
        return Ok(me);
    }
    start_hello(local, ns, REPLY_TIMEOUT)?;
    finish_hello(local, REPLY_TIMEOUT).map_err(unavailable)
}

/// Our registration, if it is intact (and this process's own), told without a
/// system call: a fork child finds the fork token cleared, and an entry the
/// server freed (because the program closed our connection, so we looked dead)
/// has a new generation or no pid.
fn registered(local: &mut Local, reg: &crate::registry::Registry) -> Option<(usize, u32)> {
    if !process::same_process(local.pid) {
        let pid = sys::getpid();
        // A raw fork's child: the registration and connection are the parent's.
        if let Some(c) = local.conn.take() {
            drop_conn(c, false);
        }
        local.pending = None;
        local.me = None;
        local.unbooked.clear();
        local.pid = pid;
        for a in local.attaches.iter_mut() {
            a.frags.retain(|f| !f.dontfork());
        }
        local.attaches.retain(|a| !a.frags.is_empty());
        local.publish_count();
        process::mark_process();
    }
    if let (Some(_), Some(me)) = (&local.conn, local.me) {
        let e = reg.proc_entry(me.0);
        if e.gen.get() == me.1 && e.pid.get() != 0 {
            return Some(me);
        }
    }
    if let Some(c) = local.conn.take() {
        // Our entry was freed: the program closed (or replaced) our connection
        // and the server took us for dead.
        let intact = c.sock.intact();
        drop_conn(c, !intact);
        local.me = None;
    }
    None
}

/// Connects (waiting at most `wait` for room in a full backlog) and sends HELLO
/// (once; the reply is taken by `finish_hello`). A connection accepted means a
/// server that has adopted the namespace is alive.
fn start_hello(local: &mut Local, ns: &Namespace, wait: Duration) -> SysResult<()> {
    if let Some(p) = &local.pending {
        if p.intact() {
            return Ok(());
        }
        if let Some(p) = local.pending.take() {
            p.forget();
        }
    }
    let pid = sys::getpid();
    let sock = HeldFd::new(connect(ns, wait)?)?;
    sys::set_passcred(sock.fd);
    // Our attaches, so that a new entry counts them (a raw fork's child, or a
    // process re-registering after its server died and its entry was reaped).
    for a in &local.attaches {
        let mut m = Msg::new(proto::FORK_REC);
        (m.a, m.b, m.c) = (a.slot as u64, a.serial, a.frags.len() as u64);
        sys::send_with_fds(sock.fd, &m.bytes(), &[], libc::MSG_DONTWAIT).map_err(|_| Errno(libc::ENOMEM))?;
    }
    let mut m = Msg::new(proto::HELLO);
    m.a = pid as u64;
    if let Some((e, g)) = local.me {
        (m.b, m.c) = (e as u64 + 1, g as u64);
    }
    m.d = crate::process::start_time(pid);
    sys::send_with_fds(sock.fd, &m.bytes(), &[], libc::MSG_DONTWAIT).map_err(|_| Errno(libc::ENOMEM))?;
    local.pending = Some(sock);
    Ok(())
}

/// Takes HELLO's reply, waiting up to `wait`.
fn finish_hello(local: &mut Local, wait: Duration) -> SysResult<(usize, u32)> {
    let sock = local.pending.as_ref().ok_or(Errno(libc::ENOMEM))?.fd;
    let r = wait_reply(sock, proto::HELLO, wait);
    let (reply, mut fds) = match r {
        Ok(r) => r,
        Err(Errno(libc::ETIMEDOUT)) => return Err(Errno(libc::ETIMEDOUT)),
        Err(e) => {
            local.pending = None;
            return Err(e);
        }
    };
    let sock = local.pending.take().ok_or(Errno(libc::ENOMEM))?;
    if fds.len() < 2 {
        return Err(Errno(libc::ENOMEM));
    }
    let death = crate::sys::high_fd(fds.remove(1)).into_raw_fd();
    let ep = crate::process::beyond_limit_fd(fds.remove(0)).into_raw_fd();
    let me = (reply.a as usize, reply.b as u32);
    // Bookings owed by a previous registration are moot: the new entry counts
    // what the attaches announced with HELLO say.
    local.unbooked.clear();
    // The kernel translates the peer's pid into our pid namespace (0 if the server
    // lives outside it, e.g. serving containers from the host).
    let server_pid = sys::peercred(sock.fd).map(|c| c.pid).unwrap_or(0);
    let server_pidfd = (server_pid > 0).then(|| sys::pidfd_open(server_pid).ok().and_then(|fd| HeldFd::new(fd).ok())).flatten();
    local.conn = Some(Conn { sock, ep, death, server_gen: reply.c, server_pid, server_pidfd });
    local.me = Some(me);
    process::DEATHFD.store(death, Ordering::Release);
    publish_sock(local.conn.as_ref().map(|c| &c.sock));
    CONN_GEN.store(reply.c, Ordering::Release);
    EPFD.store(ep, Ordering::Release);
    Ok(me)
}

/// Forgets a connection; `closed_by_program`: its numbers may be the program's
/// now, so nothing is closed.
fn drop_conn(c: Conn, closed_by_program: bool) {
    EPFD.store(-1, Ordering::Release);
    CONN_GEN.store(0, Ordering::Release);
    process::DEATHFD.store(-1, Ordering::Release);
    publish_sock(None);
    if closed_by_program {
        c.sock.forget();
        if let Some(p) = c.server_pidfd {
            p.forget();
        }
        return;
    }
    drop(c.sock);
    sys::close(c.ep);
    sys::close(c.death);
}

/// The server generation this process's connection belongs to (0: none).
static CONN_GEN: AtomicU64 = AtomicU64::new(0);
/// Set by this process's first complete `sync_now` (a fork child inherits it:
/// it knows what its parent knew).
static SYNCED_ONCE: AtomicBool = AtomicBool::new(false);

/// Publishes the connection's number and inode for `notify`, which runs without
/// LOCAL.
fn publish_sock(sock: Option<&HeldFd>) {
    process::SOCKINO.store(sock.map(|s| s.ino).unwrap_or(0), Ordering::Release);
    process::SOCKFD.store(sock.map(|s| s.fd).unwrap_or(-1), Ordering::Release);
}

/// Whether a call may read the namespace as it is, without a system call: this
/// process has learnt of every death once, and the server it knows of is alive.
/// Deaths that happen after that are applied by the server as soon as the kernel
/// tells it (the connection of the dead process hangs up), and at once by any
/// participant that waits for the dead process (`learn_deaths`), so one that has
/// waited for a child sees its detach (S120).
pub fn synced(ns: &Namespace) -> bool {
    if !SYNCED_ONCE.load(Ordering::Acquire) || !ns.reg.server_alive() {
        return false;
    }
    let gen = CONN_GEN.load(Ordering::Acquire);
    gen == 0 || gen == ns.reg.header().server_gen.get()
}

/// Before a call observes the namespace: nothing unless `synced` says otherwise,
/// then `sync_now`.
pub fn sync(ns: &Namespace) -> SysResult<()> {
    if synced(ns) {
        return Ok(());
    }
    sync_now(ns)
}

/// After this process reaped a child (the wait hooks), or before it reports a
/// shortage: every death the kernel has reported is applied, the memory of
/// segments they destroyed is released (our cached descriptors dropped, the
/// server's closed) before the call returns, so a program started next finds the
/// pages free and the ids gone.
pub fn learn_deaths(ns: &Namespace) {
    if crate::fsmutex::holding_any() {
        return; // a handler that interrupted shim code: the interrupted call syncs
    }
    let _quiet = sys::block_signals();
    let _ = sync_now(ns);
    let mut local = LOCAL.lock();
    release_destroyed(&mut local, ns);
}

/// Before an exec: the exec drops every attach of this process (S121) at its
/// point of no return, where no hook runs, and the new image may tell others it
/// runs before the server has seen our connection close. So this process's
/// registration is ended now: its attaches detached (a private namespace's
/// participant does it under the lock; a shared one's asks its server). If the
/// exec fails, `after_failed_exec` registers anew at once and counts the attaches
/// again.
pub fn before_exec(ns: &Namespace) {
    if crate::fsmutex::holding_any() {
        return;
    }
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let Some(me) = local.me else { return };
    // A vfork child shares our memory (and `local`) but is not us.
    if local.conn.is_none() || sys::getpid() != local.pid {
        return;
    }
    if ns.reg.writable {
        // (If the lock is not to be had, the server applies it: our connection
        // closes at the exec.)
        if let Ok(mut g) = ns.reg.lock_bounded() {
            crate::lifecycle::apply_death(&mut g, me.0, me.1);
        }
    } else if let Some(c) = local.conn.take() {
        // Closing our end is the death the server applies; wait for it to have
        // (on a connection of its own: ours would register us again).
        drop_conn(c, false);
        local.me = None;
        if let Ok(sock) = connect(ns, REPLY_TIMEOUT) {
            sys::set_passcred(sock.as_raw_fd());
            let _ = roundtrip(sock.as_raw_fd(), &Msg::new(proto::SYNC), &[]);
        }
    }
}

/// After an exec that failed: register again now, so our attaches count.
pub fn after_failed_exec(ns: &Namespace) {
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let _ = ensure_conn(&mut local, ns);
}

/// Drops our descriptors of destroyed segments and, if the server still holds
/// some, waits for it to close them.
pub fn release_destroyed(local: &mut Local, ns: &Namespace) {
    local.sweep_fds(&ns.reg);
    if !ns.reg.all_released() && local.conn.is_some() {
        let _ = request(local, ns, &Msg::new(proto::SYNC), &[]);
    }
}

/// Applies what the shared epoll instance reports: deaths of participants
/// (detached at once, so `shm_nattch` is exact after `waitpid`, S120) and the
/// death of the server (this process registers with its successor, which first
/// adopts or removes every segment: no id survives whose memory is gone). One
/// `epoll_wait` when nothing happened.
pub fn sync_now(ns: &Namespace) -> SysResult<()> {
    let r = sync_epoll(ns);
    if r.is_ok() {
        SYNCED_ONCE.store(true, Ordering::Release);
    }
    r
}

fn sync_epoll(ns: &Namespace) -> SysResult<()> {
    let ep = EPFD.load(Ordering::Acquire);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    let n = if ep < 0 {
        // Not registered: nothing to learn unless segments exist (their server
        // may have died since, leaving ids without memory until a new one adopts
        // the namespace).
        if ns.reg.header().in_use.get() == 0 {
            return Ok(());
        }
        let r = reregister(ns);
        // What the server may be applying right now (a death it was told of
        // before we started) is let in before the first observation; a stopped
        // writer delays it only that long.
        ns.reg.settle(SETTLE);
        // A server that lives but cannot be reached now (stopped with its
        // backlog full) leaves the registry valid: observing needs no
        // registration.
        return match r {
            Err(_) if ns.reg.server_alive() => Ok(()),
            r => r,
        };
    } else {
        match sys::epoll_wait(ep, &mut events, 0) {
            Ok(n) => n,
            Err(Errno(libc::EINTR)) => 0,
            Err(_) => return reregister(ns), // the program closed our descriptor
        }
    };
    if n == 0 {
        return Ok(());
    }
    let _quiet = sys::block_signals();
    let mut server_died = false;
    let mut deaths = Vec::new();
    for ev in &events[..n] {
        let d = ev.u64;
        match proto::ev_parse(d) {
            (proto::EV_SERVER, _, _) => server_died = true,
            (proto::EV_CONN | proto::EV_PIDFD, e, g) => deaths.push((e, g)),
            _ => {}
        }
    }
    // The report of a server death is believed only if the death pipe or the
    // server's liveness mutex agrees (in a shared namespace anyone can add items to
    // the instance).
    if server_died {
        let pipe = process::DEATHFD.load(Ordering::Acquire);
        server_died = (pipe >= 0 && sys::poll_in(pipe, 0)) || !ns.reg.server_alive();
    }
    if !ns.reg.writable {
        // Reports already synced once and still there are not the server's: skip.
        let mut seen = SYNCED.lock();
        deaths.retain(|&(e, g)| !seen.contains(&(e, g)));
        if !deaths.is_empty() {
            if seen.len() > 1024 {
                seen.clear();
            }
            seen.extend(deaths.iter().copied());
        }
    }
    if !deaths.is_empty() {
        if ns.reg.writable {
            // A holder of the lock that does not let go: the server applies them.
            let Ok(mut g) = ns.reg.lock_bounded() else { return Ok(()) };
            for (e, gen) in deaths {
                crate::lifecycle::apply_death(&mut g, e, gen);
            }
        } else {
            // A shared namespace's server applies them; wait for it to have.
            let local = LOCAL.lock();
            if let Some(c) = &local.conn {
                let _ = roundtrip(c.sock.fd, &Msg::new(proto::SYNC), &[]);
            }
        }
    }
    if server_died {
        return reregister(ns);
    }
    Ok(())
}

/// Death reports a shared namespace's client has asked its server about.
static SYNCED: crate::fsmutex::FsMutex<Vec<(usize, u32)>> = crate::fsmutex::FsMutex::new(Vec::new());

/// Registers with the current server (after its predecessor died, or after the
/// program closed our descriptors), without waiting for it: once a server has
/// accepted our connection, every segment it did not adopt is gone, so the call
/// may go on; a stopped server delays only calls that need the registration.
fn reregister(ns: &Namespace) -> SysResult<()> {
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    if let Some(c) = &local.conn {
        if !sys::poll_in(c.death, 0) && c.sock.intact() && EPFD.load(Ordering::Acquire) >= 0 {
            return Ok(()); // another thread did it already
        }
    }
    if let Some(c) = local.conn.take() {
        let intact = c.sock.intact();
        drop_conn(c, !intact);
    }
    if registered(&mut local, &ns.reg).is_some() {
        return Ok(());
    }
    // The call needs no registration: a backlog that stays full is not waited for.
    start_hello(&mut local, ns, SETTLE)?;
    match finish_hello(&mut local, Duration::ZERO) {
        Ok(_) | Err(Errno(libc::ETIMEDOUT)) => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

/// A request on this process's connection.
pub fn request(local: &mut Local, ns: &Namespace, m: &Msg, fds: &[RawFd]) -> SysResult<(Msg, Vec<OwnedFd>)> {
    ensure_conn(local, ns)?;
    if !local.conn.as_ref().map(|c| c.sock.intact()).unwrap_or(false) {
        // The program closed or replaced our connection, and the server has not
        // freed our entry yet: register anew rather than talk to its descriptor.
        if let Some(c) = local.conn.take() {
            drop_conn(c, true);
        }
        local.me = None;
        ensure_conn(local, ns)?;
    }
    let sock = local.conn.as_ref().map(|c| c.sock.fd).ok_or(Errno(libc::ENOMEM))?;
    roundtrip(sock, m, fds)
}

/// A memfd the server made and holds: (descriptor, the server's number, inode).
pub fn make_memfd(local: &mut Local, ns: &Namespace, flags: u32, len: u64) -> SysResult<(OwnedFd, i32, u64)> {
    let mut m = Msg::new(proto::MAKE);
    (m.a, m.b) = (flags as u64, len);
    let (r, mut fds) = request(local, ns, &m, &[])?;
    let fd = fds.pop().ok_or(Errno(libc::ENOMEM))?;
    Ok((fd, r.a as i32, r.b))
}

/// A segment's descriptor from the server, with the access our credentials allow.
pub fn get_fd(local: &mut Local, ns: &Namespace, slot: usize, serial: u64, rdonly: bool) -> SysResult<OwnedFd> {
    let mut m = Msg::new(proto::GET);
    (m.a, m.b, m.c) = (slot as u64, serial, rdonly as u64);
    let (_, mut fds) = request(local, ns, &m, &[])?;
    fds.pop().ok_or(Errno(libc::EIDRM))
}

/// Where the `shmshim` binary is: $SHMSHIM_SERVER, else beside this library (or
/// this executable), else on PATH.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(p) = &crate::config::get().server_bin {
        return Some(p.clone());
    }
    let mut candidates = Vec::new();
    if let Some(me) = sys::object_path(server_binary as *const () as usize) {
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

/// Starts a private namespace's server (`shmshim serve --daemon --dir DIR`, empty
/// environment, so it runs without the preload library).
pub fn spawn(dir: &Path) -> SysResult<()> {
    let bin = server_binary().ok_or_else(|| {
        eprintln!("shmshim: cannot find the shmshim binary to start the namespace's server; set SHMSHIM_SERVER=/path/to/shmshim");
        Errno(libc::ENOMEM)
    })?;
    sys::spawn_and_wait(&bin, &["shmshim", "serve", "--daemon", "--dir", &dir.to_string_lossy()]).map_err(|e| {
        eprintln!("shmshim: cannot start the server {}: {}", bin.display(), e.name());
        Errno(libc::ENOMEM)
    })
}

/// A fork child registered by its parent before the fork.
pub struct Child {
    /// The child's end of its connection (the server holds the other end).
    sock: HeldFd,
    me: (usize, u32),
}

/// Registers the child of a coming fork: its proc entry with the fragments it
/// inherits counted (S118), and its connection. In a private namespace the parent
/// does it under the lock and puts the server's end of the connection in the
/// shared epoll instance itself, then hands it to the server (no reply awaited: the
/// registration holds while that end exists, in flight or at the server). In a
/// shared namespace the server does it on request.
pub fn register_child(local: &mut Local, ns: &Namespace) -> SysResult<Child> {
    let conn = local.conn.as_ref().ok_or(Errno(libc::ENOMEM))?;
    let (mine, theirs) = sys::socketpair_unix(libc::SOCK_SEQPACKET)?;
    let sock = HeldFd::new(mine)?;
    sys::set_passcred(sock.fd);
    let pid = sys::getpid();
    if !ns.reg.writable {
        for a in &local.attaches {
            let mut m = Msg::new(proto::FORK_REC);
            (m.a, m.b, m.c) = (a.slot as u64, a.serial, a.inherited() as u64);
            sys::send_with_fds(conn.sock.fd, &m.bytes(), &[], libc::MSG_DONTWAIT)?;
        }
        let (r, _) = roundtrip(conn.sock.fd, &Msg::new(proto::FORK), &[theirs.as_raw_fd()])?;
        return Ok(Child { sock, me: (r.a as usize, r.b as u32) });
    }
    // The entry is watched (its server end in the shared instance, and handed to
    // the server, where it outlives us) before it counts anything, so a parent
    // killed at any point leaves nothing counted that nobody watches (an empty
    // entry of a dead pid is freed by the server).
    let me = ns.reg.lock_bounded()?.claim_proc(pid, 0)?;
    let undo = |ns: &Namespace| {
        if let Ok(mut g) = ns.reg.lock_bounded() {
            crate::lifecycle::apply_death(&mut g, me.0, me.1);
        }
    };
    let mut m = Msg::new(proto::ADOPT);
    (m.a, m.b) = (me.0 as u64, me.1 as u64);
    let watched = sys::epoll_add(conn.ep, theirs.as_raw_fd(), libc::EPOLLRDHUP as u32, proto::ev_data(proto::EV_CONN, me.0, me.1)).is_ok()
        && send_patiently(conn.sock.fd, &m, &[theirs.as_raw_fd()]).is_ok();
    if !watched {
        undo(ns);
        return Err(Errno(libc::ENOMEM));
    }
    drop(theirs);
    let Ok(mut g) = ns.reg.lock_bounded() else {
        undo(ns);
        return Err(Errno(libc::ENOMEM));
    };
    for a in &local.attaches {
        crate::lifecycle::shm_open_frags(&mut g, me.0, a.slot, a.serial, a.inherited(), pid);
    }
    drop(g);
    Ok(Child { sock, me })
}

/// A send that may wait a little for room in the socket (never under the
/// registry lock).
fn send_patiently(sock: RawFd, m: &Msg, fds: &[RawFd]) -> SysResult<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match sys::send_with_fds(sock, &m.bytes(), fds, libc::MSG_DONTWAIT) {
            Err(Errno(libc::EAGAIN)) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            r => return r,
        }
    }
}

/// In the child, right after fork: take the registration the parent made (or none:
/// register at the first call), and drop the attaches fork did not copy (S124).
pub fn in_child(local: &mut Local, ns: &Namespace, child: Option<Child>) {
    let pid = sys::getpid();
    local.pid = pid;
    process::mark_process();
    // A HELLO the parent is waiting for is the parent's: our copy of its socket goes.
    local.pending = None;
    local.unbooked.clear();
    let parent = local.conn.take();
    match (child, parent) {
        (Some(c), Some(p)) => {
            // Our copy of the parent's connection goes; the epoll instance and the
            // death pipe are shared.
            drop(p.sock);
            publish_sock(Some(&c.sock));
            local.conn =
                Some(Conn { sock: c.sock, ep: p.ep, death: p.death, server_gen: p.server_gen, server_pid: p.server_pid, server_pidfd: p.server_pidfd });
            local.me = Some(c.me);
            // The parent names us too, after its fork returns: whichever comes
            // second finds it done and takes no lock.
            let e = ns.reg.proc_entry(c.me.0);
            if !(e.gen.get() == c.me.1 && e.pid.get() == pid) {
                if let Some(g) = ns.reg.lock_if_writable() {
                    let e = g.proc_entry(c.me.0);
                    if e.gen.get() == c.me.1 {
                        e.pid.set(pid);
                    }
                }
            }
        }
        (_, parent) => {
            if let Some(p) = parent {
                drop_conn(p, false);
            }
            local.me = None;
        }
    }
    for a in local.attaches.iter_mut() {
        a.frags.retain(|f| !f.dontfork());
    }
    local.attaches.retain(|a| !a.frags.is_empty());
    local.publish_count();
}

/// In the parent, after fork: the child's entry names the child (or, if fork
/// failed, the registration is undone: our end of its connection closes).
pub fn after_fork(ns: &Namespace, child: Option<Child>, pid: i32) {
    let Some(c) = child else { return };
    let e = ns.reg.proc_entry(c.me.0);
    if pid > 0 && e.gen.get() == c.me.1 && e.pid.get() == pid {
        drop(c.sock); // the child named itself already
        return;
    }
    if let Some(mut g) = ns.reg.lock_if_writable() {
        if pid > 0 {
            let e = g.proc_entry(c.me.0);
            if e.gen.get() == c.me.1 && e.pid.get() != 0 {
                e.pid.set(pid);
            }
        } else {
            crate::lifecycle::apply_death(&mut g, c.me.0, c.me.1);
        }
    }
    drop(c.sock);
}

/// Opens the namespace and connects to its server now, while this process can
/// still reach the namespace directory: before a uid change or a chroot (their
/// hooks call this), so the process keeps its namespace whatever it does later.
pub fn prepare() {
    let _r = process::Reentry::enter();
    if let Ok(ns) = process::namespace() {
        let mut local = LOCAL.lock();
        let _ = ensure_conn(&mut local, ns);
    }
}
