//! libshmshim.so: the exported C ABI. Each hook converts arguments, calls safe core code in `shm`,
//! sets errno and logs. Panics never cross into the host program: they become
//! EINVAL (and a message on stderr).
//!
//! Besides the four SysV calls, shmshim interposes (each group below with the
//! reason; also `mmap`/`mmap64` for MAP_FIXED over attaches, the wait family with
//! `system` and `pclose`, `sigaction` and the `signal` family, and the
//! credential and root changes `set*id`, `setgroups`, `capset`, `chroot`):
//! - `munmap`, `mprotect`, `madvise`, `mremap`, `remap_file_pages`: to follow
//!   attach fragments (S71–S74, S124); they forward to the kernel by raw syscall;
//! - `dlmopen`: the libc copy of a new link-map namespace has its SysV functions
//!   rewritten into jumps to these hooks, as the process's own libc has at load
//!   (`patch`), so RTLD_DEEPBIND libraries and libc's own handle reach them too;
//! - the `exec` family (`execl`, `execlp` and `execle` through trampolines in
//!   `varargs`): the registration ends before the new image runs (S121);
//! - `fork`, `_Fork`: so a child's inherited attaches count in nattch as soon as
//!   fork returns (S118, S126);
//! - `syscall`: `syscall(SYS_shmget, …)` and the other three reach the shim too
//!   (S155), as does `SYS_remap_file_pages`; every other number passes through
//!   untouched;
//! - the `open`/`fopen` family, for `/proc/sysvipc/shm` (programs such as `ipcs`
//!   read the shim's namespace in the kernel's format, S138–S140) and the shm
//!   sysctls of `/proc/sys/kernel`, whose writes `write`, `fflush` and `fclose`
//!   apply (`sysctl`; S19, S128–S135); every other path and descriptor passes
//!   through at the cost of a load.
//!
//! With `SHMSHIM_MODE=native` (or `auto` where the kernel's SysV IPC works) the
//! four calls go to the kernel and nothing else is intercepted.

// These functions are the C ABI: C callers hand them raw pointers, as the libc
// functions they replace accept. Pointers are never dereferenced unchecked: user
// buffers go through sys::copy_to_user/copy_from_user (EFAULT, not a crash), and
// paths are read only up to their NUL as open(2) itself requires.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

/// Captures the environment at load time, before a program can rewrite it (as
/// PostgreSQL does with its ps display).
#[ctor::ctor]
fn snapshot() {
    // The shmshim binary (CLI and server) runs with this library only when it is
    // preloaded system-wide; it must not be served by itself.
    // Its demo steps (`shmshim demo-step`) are the exception: they are the demo's
    // SysV programs and are served like any other.
    if sys::exec_name().is_some_and(|n| n.rsplit('/').next() == Some("shmshim")) && !is_demo_step() {
        shmshim_core::config::stand_aside();
        return;
    }
    let cfg = shmshim_core::config::get();
    if cfg.trap && cfg.mode != shmshim_core::config::Mode::Native {
        // First of all: an inherited filter traps any SysV system call from here on.
        if let Some(f) = real_sigaction() {
            trap::install(f);
        }
    }
    if emulating() {
        // Calls that bypass the symbols (RTLD_DEEPBIND, libc's own handle) reach
        // the hooks too.
        patch::patch_base_libc();
    }
    // Signal blocking is skipped only while the hooks below see every handler
    // the program installs: not so if this library was loaded after the program
    // bound `sigaction` elsewhere (dlopen rather than LD_PRELOAD).
    // SAFETY: dlsym with a NUL-terminated name; the result is only compared.
    let bound = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"sigaction".as_ptr()) } as usize;
    if bound != sigaction as *const () as usize {
        sys::HANDLERS.store(true, Ordering::Release);
    }
}

/// Whether this process is `shmshim demo-step ...` (its second argument).
fn is_demo_step() -> bool {
    std::fs::read("/proc/self/cmdline").is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"demo-step"))
}

use libc::{c_char, c_int, c_long, c_uint, c_void, pid_t, size_t};
use shmshim_core::client;
use shmshim_core::config::emulating;
use shmshim_core::log;
use shmshim_core::process::{self, Reentry, FL_DONTDUMP, FL_DONTFORK, LOCAL, NFRAGS};
use shmshim_core::shm::{self, VmChange};
use shmshim_core::sys::{self, Errno, SysResult};
use shmshim_core::trace;
use std::sync::atomic::{AtomicUsize, Ordering};

mod patch;
mod sysctl;
mod trap;
mod varargs;

/// The next definition of an interposed libc function, looked up once.
macro_rules! next_fn {
    ($name:literal, $ty:ty) => {{
        static P: AtomicUsize = AtomicUsize::new(0);
        let mut p = P.load(Ordering::Relaxed);
        if p == 0 {
            p = sys::next_symbol($name).unwrap_or(0);
            P.store(p, Ordering::Relaxed);
        }
        if p == 0 {
            None
        } else {
            // SAFETY: p is the address dlsym returned for this libc function,
            // whose C prototype is exactly $ty.
            Some(unsafe { std::mem::transmute::<usize, $ty>(p) })
        }
    }};
}

fn enosys<T>(v: T) -> T {
    sys::set_errno(libc::ENOSYS);
    v
}

/// Runs shim code for a hook. A SysV call made by a signal handler that
/// interrupted this thread while it held a shim lock would wait for itself: it
/// fails at once with EDEADLK (documented in the README); one that interrupted
/// shim code holding no lock runs normally.
fn guarded<T>(f: impl FnOnce() -> SysResult<T>) -> SysResult<T> {
    if shmshim_core::fsmutex::holding_any() {
        return Err(Errno(libc::EDEADLK));
    }
    let _r = Reentry::enter();
    // A call that succeeds leaves errno as it found it, as the kernel's do,
    // whatever the shim's own system calls set on the way.
    let saved = sys::errno();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => {
            sys::set_errno(saved);
            Ok(v)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Errno(libc::EINVAL)),
    }
}

fn finish<T: Copy>(r: SysResult<T>, err_val: T) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            sys::set_call_errno(e.0);
            err_val
        }
    }
}

/// shmget(2).
#[no_mangle]
pub extern "C" fn shmget(key: libc::key_t, size: size_t, shmflg: c_int) -> c_int {
    let r = shmget_inner(key, size, shmflg);
    if trace::enabled() {
        trace::shmget(key, size, shmflg, r, sys::errno());
    }
    r
}

fn shmget_inner(key: libc::key_t, size: size_t, shmflg: c_int) -> c_int {
    if !emulating() {
        // SAFETY: forwarding the caller's arguments to libc's shmget.
        return next_fn!(c"shmget", unsafe extern "C" fn(libc::key_t, size_t, c_int) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(key, size, shmflg) });
    }
    let r = guarded(|| {
        settle_sysctls();
        shm::shmget(key, size, shmflg)
    });
    log::call(|| format!("shmget(key={key:#x}, size={size}, flg={shmflg:#o})"), r.map(|v| v as i64));
    finish(r, -1)
}

/// shmat(2). Errors return (void *)-1.
#[no_mangle]
pub extern "C" fn shmat(shmid: c_int, shmaddr: *const c_void, shmflg: c_int) -> *mut c_void {
    let r = shmat_inner(shmid, shmaddr, shmflg);
    if trace::enabled() {
        trace::shmat(shmid, shmaddr as usize, shmflg, r as usize, sys::errno());
    }
    r
}

fn shmat_inner(shmid: c_int, shmaddr: *const c_void, shmflg: c_int) -> *mut c_void {
    if !emulating() {
        // SAFETY: forwarding the caller's arguments to libc's shmat.
        return next_fn!(c"shmat", unsafe extern "C" fn(c_int, *const c_void, c_int) -> *mut c_void)
            .map_or_else(|| enosys(usize::MAX as *mut c_void), |f| unsafe { f(shmid, shmaddr, shmflg) });
    }
    let r = guarded(|| {
        settle_sysctls();
        shm::do_shmat(shmid, shmaddr as usize, shmflg)
    });
    log::call(|| format!("shmat(id={shmid}, addr={shmaddr:p}, flg={shmflg:#o})"), r.map(|v| v as i64));
    finish(r.map(|a| a as *mut c_void), usize::MAX as *mut c_void)
}

/// shmdt(2).
#[no_mangle]
pub extern "C" fn shmdt(shmaddr: *const c_void) -> c_int {
    let r = shmdt_inner(shmaddr);
    if trace::enabled() {
        trace::shmdt(shmaddr as usize, r, sys::errno());
    }
    r
}

fn shmdt_inner(shmaddr: *const c_void) -> c_int {
    if !emulating() {
        // SAFETY: forwarding the caller's argument to libc's shmdt.
        return next_fn!(c"shmdt", unsafe extern "C" fn(*const c_void) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(shmaddr) });
    }
    let r = guarded(|| {
        settle_sysctls();
        shm::shmdt(shmaddr as usize)
    });
    log::call(|| format!("shmdt(addr={shmaddr:p})"), r.map(|_| 0));
    finish(r.map(|_| 0), -1)
}

/// shmctl(2). On x86_64 glibc exports only the default version (S148), which an
/// unversioned definition interposes.
#[no_mangle]
pub extern "C" fn shmctl(shmid: c_int, cmd: c_int, buf: *mut c_void) -> c_int {
    let r = shmctl_inner(shmid, cmd, buf);
    if trace::enabled() {
        trace::shmctl(shmid, cmd, buf as usize, r, sys::errno());
    }
    r
}

fn shmctl_inner(shmid: c_int, cmd: c_int, buf: *mut c_void) -> c_int {
    if !emulating() {
        // SAFETY: forwarding the caller's arguments to libc's shmctl.
        return next_fn!(c"shmctl", unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(shmid, cmd, buf) });
    }
    let frame = 0u8;
    sys::set_caller_sp(&frame as *const u8 as usize);
    let r = guarded(|| {
        settle_sysctls();
        shm::shmctl(shmid, cmd, buf as usize)
    });
    sys::set_caller_sp(0);
    log::call(|| format!("shmctl(id={shmid}, cmd={cmd}, buf={buf:p})"), r.map(|v| v as i64));
    finish(r, -1)
}

// ------------------------------------------------------------ memory calls

fn raw_result(r: SysResult<()>) -> c_int {
    finish(r.map(|_| 0), -1)
}

fn tracking() -> bool {
    NFRAGS.load(Ordering::Acquire) > 0 && !Reentry::active()
}

/// Runs a memory call; where this process has attaches, the call and the
/// fragment bookkeeping happen together under the process lock (shm::vm_changed).
fn tracked(addr: usize, len: usize, change: VmChange, op: impl FnOnce() -> SysResult<usize>) -> SysResult<usize> {
    if !tracking() {
        return op();
    }
    guarded(|| shm::vm_changed(addr, len, change, op))
}

#[no_mangle]
pub extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let r = tracked(addr as usize, len, VmChange::Unmap, || {
        // SAFETY: the program's own munmap, forwarded unchanged.
        unsafe { sys::munmap(addr as usize, len) }.map(|_| addr as usize)
    });
    raw_result(r.map(|_| ()))
}

#[no_mangle]
pub extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    let r = tracked(addr as usize, len, VmChange::Prot(prot), || {
        // SAFETY: the program's own mprotect, forwarded unchanged.
        unsafe { sys::mprotect(addr as usize, len, prot) }.map(|_| addr as usize)
    });
    raw_result(r.map(|_| ()))
}

#[no_mangle]
pub extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let change = match advice {
        libc::MADV_DONTFORK => Some(VmChange::Flag(FL_DONTFORK, true)),
        libc::MADV_DOFORK => Some(VmChange::Flag(FL_DONTFORK, false)),
        libc::MADV_DONTDUMP => Some(VmChange::Flag(FL_DONTDUMP, true)),
        libc::MADV_DODUMP => Some(VmChange::Flag(FL_DONTDUMP, false)),
        _ => None,
    };
    if advice == libc::MADV_POPULATE_READ && shm::populate_read(addr as usize, len).is_some() {
        return 0;
    }
    let op = || if sys::madvise(addr as usize, len, advice) { Ok(addr as usize) } else { Err(Errno::last()) };
    let r = match change {
        Some(c) => tracked(addr as usize, len, c, op),
        None => op(),
    };
    raw_result(r.map(|_| ()))
}

/// mmap: a MAP_FIXED mapping replaces whatever was in its range, attaches included.
#[no_mangle]
pub extern "C" fn mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void {
    // SAFETY: the program's own mmap, forwarded unchanged.
    let op = || unsafe { sys::mmap(addr as usize, len, prot, flags, fd, off) };
    let r = if flags & libc::MAP_FIXED != 0 { tracked(addr as usize, len, VmChange::Unmap, op) } else { op() };
    finish(r.map(|a| a as *mut c_void), libc::MAP_FAILED)
}

#[no_mangle]
pub extern "C" fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void {
    mmap(addr, len, prot, flags, fd, off)
}

/// mremap is variadic in C; on x86_64 the fifth argument arrives in the same
/// register whether or not the caller passed it, and is read only with MREMAP_FIXED.
#[no_mangle]
pub extern "C" fn mremap(old: *mut c_void, old_len: size_t, new_len: size_t, flags: c_int, new_addr: *mut c_void) -> *mut c_void {
    let na = if flags & libc::MREMAP_FIXED != 0 { new_addr as usize } else { 0 };
    // SAFETY: the program's own mremap, forwarded unchanged.
    let op = || unsafe { sys::mremap(old as usize, old_len, new_len, flags, na) };
    let r = if tracking() { guarded(|| shm::vm_remapped(old as usize, old_len, new_len, op)) } else { op() };
    finish(r.map(|a| a as *mut c_void), libc::MAP_FAILED)
}

/// remap_file_pages(2) (deprecated, emulated by the kernel with mmap): over an
/// attach it re-checks the segment, as the kernel's shm mapping does.
#[no_mangle]
pub extern "C" fn remap_file_pages(addr: *mut c_void, size: size_t, prot: c_int, pgoff: size_t, flags: c_int) -> c_int {
    let kernel = || {
        // SAFETY: the program's own remap_file_pages, forwarded unchanged.
        let r = unsafe { sys::raw(libc::SYS_remap_file_pages, &[addr as usize, size, prot as usize, pgoff, flags as usize]) };
        if r == -1 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    };
    let r = if tracking() { guarded(|| shm::remap_file_pages(addr as usize, size, prot, pgoff, flags, kernel)) } else { kernel() };
    raw_result(r)
}

// ------------------------------------------------------------ fork

type ForkFn = unsafe extern "C" fn() -> pid_t;

fn real_fn(name: &std::ffi::CStr) -> Option<ForkFn> {
    // SAFETY: dlsym(RTLD_NEXT) looks up the next definition of a libc function whose
    // signature is `pid_t (void)`.
    unsafe {
        let p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
        if p.is_null() {
            None
        } else {
            Some(std::mem::transmute::<*mut c_void, ForkFn>(p))
        }
    }
}

/// fork with attach inheritance done the kernel's way: before the child exists
/// the parent registers it (a proc entry and a connection whose server end the
/// server watches) and counts the child's fragments (nattch, atime, lpid as in
/// S118), so nattch has risen by the time fork returns in either process.
fn forking(real: ForkFn) -> pid_t {
    if Reentry::active() {
        // SAFETY: calling the real libc fork/_Fork.
        return unsafe { real() };
    }
    let Some(ns) = process::namespace_if_open() else {
        // SAFETY: calling the real libc fork/_Fork.
        return unsafe { real() };
    };
    // LOCAL is held across the real fork in every case, so the child never
    // inherits it held by a thread it does not have.
    let mut local = LOCAL.lock();
    // A registered process registers its child too (even without attaches: the
    // child may not be able to reach the namespace directory, e.g. after a uid
    // change, and inherits the registration instead).
    let child = if local.conn.is_none() || local.pid != sys::getpid() {
        None
    } else {
        match client::register_child(&mut local, ns) {
            Ok(c) => Some(c),
            // A child whose attaches nobody counts could outlive the segment's
            // destruction, which frees its pages: fork fails as for want of kernel
            // memory instead (a child without attaches registers later).
            Err(_) if local.attaches.iter().any(|a| a.inherited() > 0) => {
                drop(local);
                sys::set_errno(libc::ENOMEM);
                return -1;
            }
            Err(_) => None,
        }
    };
    // Atfork handlers run inside the real fork on this thread: memory calls they
    // make must not re-enter the shim while LOCAL is held.
    let reentry = Reentry::enter();
    // SAFETY: the real fork; LOCAL is held so no other thread is mid-update, and
    // the hooks pass straight through while it runs.
    let pid = unsafe { real() };
    drop(reentry);
    if pid == 0 {
        client::in_child(&mut local, ns, child);
    } else {
        client::after_fork(ns, child, pid);
    }
    drop(local);
    pid
}

#[no_mangle]
pub extern "C" fn fork() -> pid_t {
    match real_fn(c"fork") {
        Some(f) => forking(f),
        None => {
            sys::set_errno(libc::ENOSYS);
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn _Fork() -> pid_t {
    match real_fn(c"_Fork") {
        Some(f) => forking(f),
        None => {
            sys::set_errno(libc::ENOSYS);
            -1
        }
    }
}

// ------------------------------------------------------------ signal handlers

/// Notes a disposition that is a handler (not SIG_DFL, SIG_IGN, SIG_HOLD or
/// SIG_ERR): from then on shim code blocks signals (see `sys::block_signals`).
fn note_disposition(h: usize) {
    if h > 2 && h != usize::MAX {
        sys::HANDLERS.store(true, Ordering::Release);
    }
}

type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

/// libc's sigaction.
fn real_sigaction() -> Option<SigactionFn> {
    next_fn!(c"sigaction", SigactionFn)
}

#[no_mangle]
pub extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if !act.is_null() {
        // sa_handler and sa_sigaction share the first word of the structure.
        let mut h = [0u8; std::mem::size_of::<usize>()];
        match sys::copy_from_user(&mut h, act as usize) {
            Ok(()) => note_disposition(usize::from_ne_bytes(h)),
            Err(_) => sys::HANDLERS.store(true, Ordering::Release),
        }
    }
    if sig == libc::SIGSYS && trap::ACTIVE.load(Ordering::Acquire) {
        // Trap mode keeps SIGSYS's handler; the program's is kept aside.
        return trap::program_sigaction(act, old);
    }
    // SAFETY: forwarding the caller's arguments to libc.
    real_sigaction().map_or_else(|| enosys(-1), |f| unsafe { f(sig, act, old) })
}

macro_rules! signal_hook {
    ($name:ident, $cname:literal) => {
        #[no_mangle]
        pub extern "C" fn $name(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
            note_disposition(handler);
            if sig == libc::SIGSYS && trap::ACTIVE.load(Ordering::Acquire) {
                return trap::program_signal(handler);
            }
            // SAFETY: forwarding the caller's arguments to libc.
            next_fn!($cname, SignalFn).map_or_else(|| enosys(libc::SIG_ERR), |f| unsafe { f(sig, handler) })
        }
    };
}

signal_hook!(signal, c"signal");
signal_hook!(sigset, c"sigset");
signal_hook!(bsd_signal, c"bsd_signal");
signal_hook!(sysv_signal, c"sysv_signal");
signal_hook!(__sysv_signal, c"__sysv_signal");

// ------------------------------------------------------------ dlmopen

/// dlmopen(3): a library in a new link-map namespace has a libc of its own,
/// whose SysV functions are rewritten to reach the hooks (see `patch`).
#[no_mangle]
pub extern "C" fn dlmopen(lmid: libc::Lmid_t, file: *const c_char, mode: c_int) -> *mut c_void {
    type DlmopenFn = unsafe extern "C" fn(libc::Lmid_t, *const c_char, c_int) -> *mut c_void;
    let Some(real) = next_fn!(c"dlmopen", DlmopenFn) else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's arguments to libc.
    let h = unsafe { real(lmid, file, mode) };
    if !h.is_null() && emulating() && !Reentry::active() {
        let saved = sys::errno();
        let _ = std::panic::catch_unwind(|| patch::after_dlmopen(h, real));
        sys::set_errno(saved);
    }
    h
}

// ------------------------------------------------------------ exec

/// Runs an exec with this process's registration ended first (see
/// `client::before_exec`), and restored if the exec fails.
fn execing(exec: impl FnOnce() -> c_int) -> c_int {
    let ns = if Reentry::active() || !emulating() { None } else { process::namespace_if_open() };
    if sysctl::any() && !Reentry::active() {
        let _r = Reentry::enter();
        let saved = sys::errno();
        let _ = std::panic::catch_unwind(sysctl::settle);
        sys::set_errno(saved);
    }
    if let Some(ns) = ns {
        let _r = Reentry::enter();
        let _ = std::panic::catch_unwind(|| client::before_exec(ns));
    }
    let r = exec();
    if let Some(ns) = ns {
        let saved = sys::errno();
        let _r = Reentry::enter();
        let _ = std::panic::catch_unwind(|| client::after_failed_exec(ns));
        sys::set_errno(saved);
    }
    r
}

type ExecveFn = unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;

#[no_mangle]
pub extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"execve", ExecveFn).map_or_else(|| enosys(-1), |f| unsafe { f(path, argv, envp) }))
}

#[no_mangle]
pub extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"execv", ExecvFn).map_or_else(|| enosys(-1), |f| unsafe { f(path, argv) }))
}

#[no_mangle]
pub extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"execvp", ExecvFn).map_or_else(|| enosys(-1), |f| unsafe { f(file, argv) }))
}

#[no_mangle]
pub extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"execvpe", ExecveFn).map_or_else(|| enosys(-1), |f| unsafe { f(file, argv, envp) }))
}

#[no_mangle]
pub extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    type FexecveFn = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"fexecve", FexecveFn).map_or_else(|| enosys(-1), |f| unsafe { f(fd, argv, envp) }))
}

#[no_mangle]
pub extern "C" fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int {
    type ExecveatFn = unsafe extern "C" fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int;
    // SAFETY: forwarding the caller's arguments to libc.
    execing(|| next_fn!(c"execveat", ExecveatFn).map_or_else(|| enosys(-1), |f| unsafe { f(dirfd, path, argv, envp, flags) }))
}

// ------------------------------------------------------------ wait

/// After the program reaped (or was told of) a child's end: the deaths the
/// kernel reported are applied and their memory released before the wait
/// returns, so the waiter (and whatever it starts or tells next) sees the child's
/// detaches, as after exit_shm (S120).
fn reaped() {
    if Reentry::active() || !emulating() {
        return;
    }
    let Some(ns) = process::namespace_if_open() else { return };
    let saved = sys::errno();
    let _r = Reentry::enter();
    let _ = std::panic::catch_unwind(|| client::learn_deaths(ns));
    if sysctl::any() {
        let _ = std::panic::catch_unwind(sysctl::settle);
    }
    sys::set_errno(saved);
}

/// Whether a wait status reports an end (not a stop or a continue).
fn ended(status: *const c_int) -> bool {
    if status.is_null() {
        return true;
    }
    let mut st = [0u8; 4];
    if sys::copy_from_user(&mut st, status as usize).is_err() {
        return true;
    }
    let st = c_int::from_ne_bytes(st);
    libc::WIFEXITED(st) || libc::WIFSIGNALED(st)
}

#[no_mangle]
pub extern "C" fn wait(status: *mut c_int) -> pid_t {
    // SAFETY: forwarding the caller's argument to libc.
    let r = next_fn!(c"wait", unsafe extern "C" fn(*mut c_int) -> pid_t).map_or_else(|| enosys(-1), |f| unsafe { f(status) });
    if r > 0 && ended(status) {
        reaped();
    }
    r
}

#[no_mangle]
pub extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    // SAFETY: forwarding the caller's arguments to libc.
    let r = next_fn!(c"waitpid", unsafe extern "C" fn(pid_t, *mut c_int, c_int) -> pid_t).map_or_else(|| enosys(-1), |f| unsafe { f(pid, status, options) });
    if r > 0 && ended(status) {
        reaped();
    }
    r
}

#[no_mangle]
pub extern "C" fn wait3(status: *mut c_int, options: c_int, usage: *mut libc::rusage) -> pid_t {
    // SAFETY: forwarding the caller's arguments to libc.
    let r = next_fn!(c"wait3", unsafe extern "C" fn(*mut c_int, c_int, *mut libc::rusage) -> pid_t)
        .map_or_else(|| enosys(-1), |f| unsafe { f(status, options, usage) });
    if r > 0 && ended(status) {
        reaped();
    }
    r
}

#[no_mangle]
pub extern "C" fn wait4(pid: pid_t, status: *mut c_int, options: c_int, usage: *mut libc::rusage) -> pid_t {
    // SAFETY: forwarding the caller's arguments to libc.
    let r = next_fn!(c"wait4", unsafe extern "C" fn(pid_t, *mut c_int, c_int, *mut libc::rusage) -> pid_t)
        .map_or_else(|| enosys(-1), |f| unsafe { f(pid, status, options, usage) });
    if r > 0 && ended(status) {
        reaped();
    }
    r
}

/// waitid: si_code tells an end (CLD_EXITED, CLD_KILLED, CLD_DUMPED) from a stop,
/// also under WNOWAIT (the child is dead even if not reaped yet).
#[no_mangle]
pub extern "C" fn waitid(idtype: libc::idtype_t, id: libc::id_t, info: *mut libc::siginfo_t, options: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    let r = next_fn!(c"waitid", unsafe extern "C" fn(libc::idtype_t, libc::id_t, *mut libc::siginfo_t, c_int) -> c_int)
        .map_or_else(|| enosys(-1), |f| unsafe { f(idtype, id, info, options) });
    if r == 0 {
        let mut si = [0u8; 12];
        let code = if info.is_null() || sys::copy_from_user(&mut si, info as usize).is_err() {
            libc::CLD_EXITED
        } else {
            i32::from_ne_bytes([si[8], si[9], si[10], si[11]])
        };
        if matches!(code, libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED) {
            reaped();
        }
    }
    r
}

/// system(3) waits inside libc, out of the wait hooks' reach.
#[no_mangle]
pub extern "C" fn system(cmd: *const c_char) -> c_int {
    // SAFETY: forwarding the caller's argument to libc.
    let r = next_fn!(c"system", unsafe extern "C" fn(*const c_char) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(cmd) });
    if !cmd.is_null() {
        reaped();
    }
    r
}

/// pclose(3) waits inside libc too.
#[no_mangle]
pub extern "C" fn pclose(fp: *mut libc::FILE) -> c_int {
    // SAFETY: forwarding the caller's argument to libc.
    let r = next_fn!(c"pclose", unsafe extern "C" fn(*mut libc::FILE) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(fp) });
    reaped();
    r
}

// ------------------------------------------------------------ syscall(2)

type SyscallFn = unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

/// syscall(2). It is variadic in C; on x86_64 and aarch64 the six possible
/// arguments arrive in registers whether or not the caller passed them, and are
/// forwarded unchanged.
#[no_mangle]
pub extern "C" fn syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    let shm = matches!(n, libc::SYS_shmget | libc::SYS_shmat | libc::SYS_shmctl | libc::SYS_shmdt);
    if shm && !Reentry::active() && emulating() {
        return match n {
            libc::SYS_shmget => shmget(a1 as libc::key_t, a2 as size_t, a3 as c_int) as c_long,
            libc::SYS_shmat => shmat(a1 as c_int, a2 as *const c_void, a3 as c_int) as c_long,
            libc::SYS_shmctl => shmctl(a1 as c_int, a2 as c_int, a3 as *mut c_void) as c_long,
            _ => shmdt(a1 as *const c_void) as c_long,
        };
    }
    if n == libc::SYS_remap_file_pages && !Reentry::active() && emulating() {
        return remap_file_pages(a1 as *mut c_void, a2 as size_t, a3 as c_int, a4 as size_t, a5 as c_int) as c_long;
    }
    let cred_change = matches!(
        n,
        libc::SYS_setuid
            | libc::SYS_setgid
            | libc::SYS_setreuid
            | libc::SYS_setregid
            | libc::SYS_setresuid
            | libc::SYS_setresgid
            | libc::SYS_setgroups
            | libc::SYS_capset
            | libc::SYS_chroot
    );
    if cred_change {
        before_credential_change();
    }
    let r = match next_fn!(c"syscall", SyscallFn) {
        // SAFETY: forwarding every argument unchanged to libc's syscall().
        Some(f) => unsafe { f(n, a1, a2, a3, a4, a5, a6) },
        None => enosys(-1),
    };
    if cred_change {
        sys::CRED_GEN.fetch_add(1, Ordering::AcqRel);
    }
    r
}

// ------------------------------------------------------------ /proc/sysvipc/shm

const SYSVIPC_SHM: &[u8] = b"/proc/sysvipc/shm";

fn is_sysvipc(path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: the caller passed a NUL-terminated path (as open(2) requires); we
    // read at most up to its NUL.
    let b = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    b == SYSVIPC_SHM && emulating()
}

/// A descriptor reading the shim's namespace in /proc/sysvipc/shm's format.
fn sysvipc_open(flags: c_int) -> c_int {
    let r = guarded(|| {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno(libc::EACCES)); // the file is 0444
        }
        let ns = process::namespace()?;
        let text = shm::sysvipc_text(ns);
        let fd = sys::memfd_create(c"sysvipc_shm", if flags & libc::O_CLOEXEC != 0 { libc::MFD_CLOEXEC } else { 0 })?;
        sys::pwrite_all(std::os::fd::AsRawFd::as_raw_fd(&fd), text.as_bytes(), 0)?;
        Ok(std::os::fd::IntoRawFd::into_raw_fd(fd))
    });
    finish(r, -1)
}

// ------------------------------------------------------------ /proc/sys/kernel/shm*

fn sysctl_path(path: *const c_char) -> Option<shmshim_core::lifecycle::Sysctl> {
    sysctl::which(path).filter(|_| emulating())
}

/// open(2) of a sysctl the shim serves (see `sysctl`).
fn sysctl_open(w: shmshim_core::lifecycle::Sysctl, flags: c_int) -> c_int {
    let r = guarded(|| sysctl::open(w, flags));
    finish(r, -1)
}

/// fopen(3) of one: the open(2) its mode means, then fdopen.
fn sysctl_fopen(w: shmshim_core::lifecycle::Sysctl, mode: *const c_char) -> *mut libc::FILE {
    // The mode's first three characters (up to its NUL): "r", "w+", "rb+"…
    let mut m = [0u8; 3];
    for (i, b) in m.iter_mut().enumerate() {
        if sys::copy_from_user(std::slice::from_mut(b), mode as usize + i).is_err() || *b == 0 {
            break;
        }
    }
    let plus = m[1..].contains(&b'+');
    let flags = match (m[0], plus) {
        (b'r', false) => libc::O_RDONLY,
        (b'r' | b'w' | b'a', true) => libc::O_RDWR,
        (b'w' | b'a', false) => libc::O_WRONLY,
        _ => {
            sys::set_errno(libc::EINVAL);
            return std::ptr::null_mut();
        }
    };
    let fd = sysctl_open(w, flags);
    if fd < 0 {
        return std::ptr::null_mut();
    }
    stream_on(fd, mode)
}

/// write(2): a write to a sysctl's descriptor is applied (or refused) as the
/// kernel's; everything else goes to libc at the cost of one load.
#[no_mangle]
pub extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> isize {
    if sysctl::any() && !Reentry::active() && !shmshim_core::fsmutex::holding_any() {
        let r = guarded(|| sysctl::write(fd, buf as *const u8, n).map_or(Err(Errno(0)), |r| r.map(|v| v as isize)));
        match r {
            Err(Errno(0)) => {} // not a sysctl
            r => return finish(r, -1),
        }
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"write", unsafe extern "C" fn(c_int, *const c_void, size_t) -> isize).map_or_else(|| enosys(-1), |f| unsafe { f(fd, buf, n) })
}

/// Runs libc's fclose or fflush (`real`) on `fp`; a stream on a sysctl's file has
/// its flushed text applied, and fails with EINVAL (its error flag set) where the
/// kernel's write would have.
fn flush_stream(fp: *mut libc::FILE, closing: bool, real: impl FnOnce() -> c_int) -> c_int {
    let pending = if sysctl::any() && !fp.is_null() && !Reentry::active() {
        // SAFETY: fp is the caller's open stream (fclose and fflush require one).
        sysctl::pending(unsafe { libc::fileno(fp) })
    } else {
        None
    };
    let r = real();
    if let Some(ino) = pending {
        if let Err(e) = guarded(|| sysctl::flushed(ino, closing)) {
            if !closing {
                mark_stream_error(fp);
            }
            sys::set_errno(e.0);
            return libc::EOF;
        }
    }
    r
}

/// fclose(3) (see `flush_stream`).
#[no_mangle]
pub extern "C" fn fclose(fp: *mut libc::FILE) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    flush_stream(fp, true, || next_fn!(c"fclose", unsafe extern "C" fn(*mut libc::FILE) -> c_int).map_or_else(|| enosys(libc::EOF), |f| unsafe { f(fp) }))
}

/// fflush(3): as fclose, for a stream that stays open (a shell's `echo > file`
/// flushes stdout, dup'ed onto the sysctl's descriptor, and checks `ferror`).
#[no_mangle]
pub extern "C" fn fflush(fp: *mut libc::FILE) -> c_int {
    // SAFETY: forwarding the caller's arguments to libc.
    flush_stream(fp, false, || next_fn!(c"fflush", unsafe extern "C" fn(*mut libc::FILE) -> c_int).map_or_else(|| enosys(libc::EOF), |f| unsafe { f(fp) }))
}

/// Sets a stream's error indicator, as a failed write does (`ferror` reads it):
/// glibc's `_IO_ERR_SEEN` in the `_flags` word that starts its FILE.
fn mark_stream_error(fp: *mut libc::FILE) {
    #[cfg(target_env = "gnu")]
    {
        const IO_ERR_SEEN: c_int = 0x20;
        let mut w = [0u8; 4];
        if sys::copy_from_user(&mut w, fp as usize).is_ok() {
            let flags = c_int::from_ne_bytes(w) | IO_ERR_SEEN;
            let _ = sys::copy_to_user(fp as usize, &flags.to_ne_bytes());
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = fp;
}

/// Before a SysV call: sysctl writes made past the hooks take effect first.
fn settle_sysctls() {
    if sysctl::any() {
        let saved = sys::errno();
        let _ = std::panic::catch_unwind(sysctl::settle);
        sys::set_errno(saved);
    }
}

/// At exit: writes still pending reach the namespace.
#[ctor::dtor]
fn at_exit() {
    if sysctl::any() && !Reentry::active() {
        let _r = Reentry::enter();
        let _ = std::panic::catch_unwind(sysctl::settle);
    }
}

/// The descriptor of an open(2) of a path the shim serves: /proc/sysvipc/shm or
/// a shm sysctl. None: the path goes to libc.
fn served_open(path: *const c_char, flags: c_int) -> Option<c_int> {
    if is_sysvipc(path) {
        return Some(sysvipc_open(flags));
    }
    sysctl_path(path).map(|w| sysctl_open(w, flags))
}

/// The stream of an fopen(3) of a path the shim serves.
fn served_fopen(path: *const c_char, mode: *const c_char) -> Option<*mut libc::FILE> {
    if is_sysvipc(path) {
        return Some(sysvipc_fopen(mode));
    }
    sysctl_path(path).map(|w| sysctl_fopen(w, mode))
}

/// fdopen of a descriptor the shim just opened (closed again if that fails).
fn stream_on(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: fd is a descriptor we just opened; `mode` is the caller's string.
    let f = unsafe { libc::fdopen(fd, mode) };
    if f.is_null() {
        sys::close(fd);
    }
    f
}

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, c_uint) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint) -> c_int;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;

/// open(2); `mode` is read only with O_CREAT/O_TMPFILE, as in C.
#[no_mangle]
pub extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"open", OpenFn).map_or_else(|| enosys(-1), |f| unsafe { f(path, flags, mode) })
}

#[no_mangle]
pub extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"open64", OpenFn).map_or_else(|| enosys(-1), |f| unsafe { f(path, flags, mode) })
}

#[no_mangle]
pub extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"__open_2", unsafe extern "C" fn(*const c_char, c_int) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(path, flags) })
}

#[no_mangle]
pub extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"__open64_2", unsafe extern "C" fn(*const c_char, c_int) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(path, flags) })
}

#[no_mangle]
pub extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"__openat_2", unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(dirfd, path, flags) })
}

#[no_mangle]
pub extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"__openat64_2", unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f(dirfd, path, flags) })
}

#[no_mangle]
pub extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"openat", OpenatFn).map_or_else(|| enosys(-1), |f| unsafe { f(dirfd, path, flags, mode) })
}

#[no_mangle]
pub extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    if let Some(fd) = served_open(path, flags) {
        return fd;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"openat64", OpenatFn).map_or_else(|| enosys(-1), |f| unsafe { f(dirfd, path, flags, mode) })
}

fn sysvipc_fopen(mode: *const c_char) -> *mut libc::FILE {
    let fd = sysvipc_open(libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return std::ptr::null_mut();
    }
    stream_on(fd, mode)
}

#[no_mangle]
pub extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if let Some(f) = served_fopen(path, mode) {
        return f;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"fopen", FopenFn).map_or_else(|| enosys(std::ptr::null_mut()), |f| unsafe { f(path, mode) })
}

#[no_mangle]
pub extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if let Some(f) = served_fopen(path, mode) {
        return f;
    }
    // SAFETY: forwarding the caller's arguments to libc.
    next_fn!(c"fopen64", FopenFn).map_or_else(|| enosys(std::ptr::null_mut()), |f| unsafe { f(path, mode) })
}

// ------------------------------------------------------------ credential changes

/// Forwards a credential-changing libc call, then invalidates the cached
/// euid/egid (`sys::eids`). glibc applies these to every thread of the process.
macro_rules! cred_hook {
    ($name:ident, $cname:literal, ($($arg:ident : $ty:ty),*)) => {
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> c_int {
            before_credential_change();
            // SAFETY: forwarding the caller's arguments to libc.
            let r = next_fn!($cname, unsafe extern "C" fn($($ty),*) -> c_int).map_or_else(|| enosys(-1), |f| unsafe { f($($arg),*) });
            sys::CRED_GEN.fetch_add(1, Ordering::AcqRel);
            r
        }
    };
}

/// A process keeps the namespace it started with: it is opened (and the server
/// connected) before the process changes its credentials or root, while it can
/// still reach the namespace directory.
fn before_credential_change() {
    if emulating() && !Reentry::active() {
        client::prepare();
    }
}

cred_hook!(setuid, c"setuid", (uid: libc::uid_t));
cred_hook!(seteuid, c"seteuid", (uid: libc::uid_t));
cred_hook!(setreuid, c"setreuid", (ruid: libc::uid_t, euid: libc::uid_t));
cred_hook!(setresuid, c"setresuid", (ruid: libc::uid_t, euid: libc::uid_t, suid: libc::uid_t));
cred_hook!(setgid, c"setgid", (gid: libc::gid_t));
cred_hook!(setegid, c"setegid", (gid: libc::gid_t));
cred_hook!(setregid, c"setregid", (rgid: libc::gid_t, egid: libc::gid_t));
cred_hook!(setresgid, c"setresgid", (rgid: libc::gid_t, egid: libc::gid_t, sgid: libc::gid_t));
cred_hook!(setgroups, c"setgroups", (n: size_t, list: *const libc::gid_t));
cred_hook!(setfsuid, c"setfsuid", (uid: libc::uid_t));
cred_hook!(setfsgid, c"setfsgid", (gid: libc::gid_t));
cred_hook!(capset, c"capset", (hdr: *mut c_void, data: *const c_void));
cred_hook!(chroot, c"chroot", (path: *const c_char));
