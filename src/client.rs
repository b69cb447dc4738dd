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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a call waits for its server's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Connects to the namespace's server, starting one (private namespaces) when
/// nobody listens.
fn connect(ns: &Namespace) -> SysResult<OwnedFd> {
    let path = sock_path(&ns.dir);
    let s = sys::socket_unix(libc::SOCK_SEQPACKET)?;
    match sys::connect(s.as_raw_fd(), &path) {
        Ok(()) => return Ok(s),
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
        let s = sys::socket_unix(libc::SOCK_SEQPACKET)?;
        match sys::connect(s.as_raw_fd(), &path) {
            Ok(()) => return Ok(s),
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
    if let Some(me) = registered(local) {
        return Ok(me);
    }
    start_hello(local, ns)?;
    finish_hello(local, REPLY_TIMEOUT).map_err(unavailable)
}

/// Our registration, if it is intact (and this process's own).
fn registered(local: &mut Local) -> Option<(usize, u32)> {
    let pid = sys::getpid();
    if local.pid != pid {
        // A raw fork's child: the registration and connection are the parent's.
        if let Some(c) = local.conn.take() {
            drop_conn(c, false);
        }
        local.pending = None;
        local.me = None;
        local.pid = pid;
        for a in local.attaches.iter_mut() {
            a.frags.retain(|f| !f.dontfork());
        }
        local.attaches.retain(|a| !a.frags.is_empty());
        local.publish_count();
    }
    if let (Some(c), Some(me)) = (&local.conn, local.me) {
        if c.sock.intact() {
            return Some(me);
        }
    }
    if let Some(c) = local.conn.take() {
        // Closed or replaced by the program: the server has seen us "die".
        drop_conn(c, true);
        local.me = None;
    }
    None
}

/// Connects and sends HELLO (once; the reply is taken by `finish_hello`). A
/// connection accepted means a server that has adopted the namespace is alive.
fn start_hello(local: &mut Local, ns: &Namespace) -> SysResult<()> {
    if let Some(p) = &local.pending {
        if p.intact() {
            return Ok(());
        }
        if let Some(p) = local.pending.take() {
            p.forget();
        }
    }
    let pid = sys::getpid();
    let sock = HeldFd::new(connect(ns)?)?;
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
    let death = crate::process::high_fd(fds.remove(1)).into_raw_fd();
    let ep = crate::process::beyond_limit_fd(fds.remove(0)).into_raw_fd();
    let me = (reply.a as usize, reply.b as u32);
    // The kernel translates the peer's pid into our pid namespace (0 if the server
    // lives outside it, e.g. serving containers from the host).
    let server_pid = sys::peercred(sock.fd).map(|c| c.pid).unwrap_or(0);
    local.conn = Some(Conn { sock, ep, death, server_gen: reply.c, server_pid });
    local.me = Some(me);
    crate::process::set_my_entry(Some(me));
    process::DEATHFD.store(death, Ordering::Release);
    process::SOCKFD.store(local.conn.as_ref().map(|c| c.sock.fd).unwrap_or(-1), Ordering::Release);
    EPFD.store(ep, Ordering::Release);
    Ok(me)
}

/// Forgets a connection; `closed_by_program`: its numbers may be the program's
/// now, so nothing is closed.
fn drop_conn(c: Conn, closed_by_program: bool) {
    EPFD.store(-1, Ordering::Release);
    process::DEATHFD.store(-1, Ordering::Release);
    process::SOCKFD.store(-1, Ordering::Release);
    if closed_by_program {
        c.sock.forget();
        return;
    }
    drop(c.sock);
    sys::close(c.ep);
    sys::close(c.death);
}

/// Applies what the shared epoll instance reports before a call observes the
/// namespace: deaths of participants (detached at once, so `shm_nattch` is exact
/// after `waitpid`, S120) and the death of the server (this process registers with
/// its successor, which first adopts or removes every segment: no id survives whose
/// memory is gone). One `epoll_wait` when nothing happened.
pub fn sync(ns: &Namespace) -> SysResult<()> {
    let ep = EPFD.load(Ordering::Acquire);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    let n = if ep < 0 {
        // Not registered: nothing to learn unless segments exist (their server
        // may have died since, leaving ids without memory until a new one adopts
        // the namespace).
        if ns.reg.header().in_use.get() == 0 {
            return Ok(());
        }
        return reregister(ns);
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
            let mut g = ns.reg.lock();
            for (e, gen) in deaths {
                crate::shm::apply_death(&mut g, e, gen);
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
    if registered(&mut local).is_some() {
        return Ok(());
    }
    start_hello(&mut local, ns)?;
    match finish_hello(&mut local, Duration::ZERO) {
        Ok(_) | Err(Errno(libc::ETIMEDOUT)) => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

/// Sends a message that needs no reply: best effort, never waits, needs no lock
/// (the connection's number is published in `SOCKFD`).
pub fn notify(m: &Msg) {
    let fd = process::SOCKFD.load(Ordering::Acquire);
    if fd >= 0 {
        let _ = sys::send_with_fds(fd, &m.bytes(), &[], libc::MSG_DONTWAIT);
    }
}

/// Wakes the server: a removed segment's memory is to be released now.
pub fn wake_server() {
    notify(&Msg::new(proto::REFILL));
}

/// A request on this process's connection.
pub fn request(local: &mut Local, ns: &Namespace, m: &Msg, fds: &[RawFd]) -> SysResult<(Msg, Vec<OwnedFd>)> {
    ensure_conn(local, ns)?;
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
    let me = ns.reg.lock().claim_proc(pid, 0)?;
    let undo = |ns: &Namespace| crate::shm::apply_death(&mut ns.reg.lock(), me.0, me.1);
    let mut m = Msg::new(proto::ADOPT);
    (m.a, m.b) = (me.0 as u64, me.1 as u64);
    let watched = sys::epoll_add(conn.ep, theirs.as_raw_fd(), libc::EPOLLRDHUP as u32, proto::ev_data(proto::EV_CONN, me.0, me.1)).is_ok()
        && send_patiently(conn.sock.fd, &m, &[theirs.as_raw_fd()]).is_ok();
    if !watched {
        undo(ns);
        return Err(Errno(libc::ENOMEM));
    }
    drop(theirs);
    {
        let mut g = ns.reg.lock();
        for a in &local.attaches {
            crate::shm::shm_open_frags(&mut g, me.0, a.slot, a.serial, a.inherited(), pid);
        }
    }
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
    // A HELLO the parent is waiting for is the parent's: our copy of its socket goes.
    local.pending = None;
    let parent = local.conn.take();
    match (child, parent) {
        (Some(c), Some(p)) => {
            // Our copy of the parent's connection goes; the epoll instance and the
            // death pipe are shared.
            drop(p.sock);
            process::SOCKFD.store(c.sock.fd, Ordering::Release);
            local.conn = Some(Conn { sock: c.sock, ep: p.ep, death: p.death, server_gen: p.server_gen, server_pid: p.server_pid });
            local.me = Some(c.me);
            crate::process::set_my_entry(Some(c.me));
            if ns.reg.writable {
                let g = ns.reg.lock();
                let e = g.proc_entry(c.me.0);
                if e.gen.get() == c.me.1 {
                    e.pid.set(pid);
                }
            }
        }
        (_, parent) => {
            if let Some(p) = parent {
                drop_conn(p, false);
            }
            local.me = None;
            crate::process::set_my_entry(None);
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
    if ns.reg.writable {
        let mut g = ns.reg.lock();
        if pid > 0 {
            let e = g.proc_entry(c.me.0);
            if e.gen.get() == c.me.1 && e.pid.get() != 0 {
                e.pid.set(pid);
            }
        } else {
            crate::shm::apply_death(&mut g, c.me.0, c.me.1);
        }
    }
    drop(c.sock);
}
