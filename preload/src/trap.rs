//! `SHMSHIM_TRAP=1`: serving the SysV system calls themselves.
//!
//! The hooks see calls made through libc. A program that issues the system call
//! instruction itself (its own `syscall` stub, a statically linked helper, a JIT)
//! goes past them. In trap mode the library installs, at load, a seccomp filter
//! that turns x86_64's `shmget`, `shmat`, `shmdt` and `shmctl` system calls into a
//! `SIGSYS` for the calling thread (the other ABIs' get ENOSYS), and a `SIGSYS`
//! handler that serves the call with the hook of the same name and puts the
//! kernel-style result (the value, or -errno) in the thread's `rax`.
//!
//! What it changes for the program, all in README:
//! - the filter is inherited by every child and survives exec: an exec'd image
//!   without this library dies of SIGSYS at its first SysV call (libc's included);
//! - installing it unprivileged sets no_new_privs (set-user-ID programs it runs
//!   no longer gain privileges);
//! - the program's own `SIGSYS` disposition is kept aside: `sigaction` and
//!   `signal` report and change it, and a `SIGSYS` that is not one of these traps
//!   (another filter's, `raise`) goes to it;
//! - a thread that blocks `SIGSYS` and makes a trapped call is killed by the
//!   kernel, as any blocked synchronous signal would kill it.
//!
//! x86_64 only: elsewhere `SHMSHIM_TRAP` is ignored with a log line.

use libc::{c_int, c_void};
use shmshim_core::sys;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// Whether this process's SIGSYS handler is ours (trap mode is on).
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set while the load-time probe runs: a trap now means the filter is there.
static PROBING: AtomicBool = AtomicBool::new(false);
static PROBED: AtomicBool = AtomicBool::new(false);

/// The program's own SIGSYS disposition, as it last set it: handler, flags and
/// mask (the mask's first 128 bits: every signal Linux has).
static PROG_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PROG_FLAGS: AtomicI32 = AtomicI32::new(0);
static PROG_MASK: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

const SYS_SECCOMP: c_int = 1; // si_code of a seccomp trap
                              // siginfo_t's _sigsys member on x86_64: _call_addr at 16, _syscall at 24.
const SI_SYSCALL_OFF: usize = 24;

/// At load, before anything else may make a SysV system call: installs the
/// handler, then the filter unless an ancestor's is already in force (a trapped
/// probe says so).
#[cfg(target_arch = "x86_64")]
pub fn install(real_sigaction: unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int) -> bool {
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: the real sigaction with a valid action and a place for the old one
    // (after an exec: SIG_DFL, or an inherited SIG_IGN, which the program keeps).
    if unsafe { real_sigaction(libc::SIGSYS, &sa, &mut old) } != 0 {
        return false;
    }
    PROG_HANDLER.store(old.sa_sigaction, Ordering::Release);
    ACTIVE.store(true, Ordering::Release);
    PROBING.store(true, Ordering::Release);
    // shmdt(1) is harmless everywhere: EINVAL from the kernel, ENOSYS in a
    // sandbox, or a trap into on_sigsys if the filter is in force.
    let _ = sys::raw_shmdt(1);
    PROBING.store(false, Ordering::Release);
    if PROBED.load(Ordering::Acquire) {
        return true;
    }
    match sys::trap_sysv_shm() {
        Ok(()) => true,
        Err(e) => {
            shmshim_core::log::write_line(&format!("shmshim[{}]: SHMSHIM_TRAP: the seccomp filter was refused: {}\n", sys::getpid(), e.name()));
            false
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn install(_: unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int) -> bool {
    shmshim_core::log::write_line(&format!("shmshim[{}]: SHMSHIM_TRAP is supported on x86_64 only\n", sys::getpid()));
    false
}

/// The SIGSYS handler: serves a trapped SysV call, or passes any other SIGSYS to
/// the program's disposition.
#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let mut head = [0u8; 28];
    // The signal's origin: si_code (offset 8) and the system call number.
    let ours = sys::copy_from_user(&mut head, info as usize).is_ok() && i32::from_ne_bytes(head[8..12].try_into().unwrap_or_default()) == SYS_SECCOMP;
    let nr = i32::from_ne_bytes(head[SI_SYSCALL_OFF..SI_SYSCALL_OFF + 4].try_into().unwrap_or_default()) as i64;
    let shm = matches!(nr, libc::SYS_shmget | libc::SYS_shmat | libc::SYS_shmdt | libc::SYS_shmctl);
    if !ours || !shm || uctx.is_null() {
        to_program(sig, info, uctx);
        return;
    }
    // SAFETY: the kernel passes a valid ucontext_t for an SA_SIGINFO handler;
    // its saved registers are this thread's, which it restores on return.
    let regs = unsafe { &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    if PROBING.load(Ordering::Acquire) {
        PROBED.store(true, Ordering::Release);
        regs[libc::REG_RAX as usize] = -(libc::EINVAL as i64);
        return;
    }
    let a = |r: c_int| regs[r as usize] as u64;
    let (a0, a1, a2) = (a(libc::REG_RDI), a(libc::REG_RSI), a(libc::REG_RDX));
    // A raw system call leaves errno alone: the hook's is taken as the result.
    let saved = sys::errno();
    let ret: i64 = match nr {
        libc::SYS_shmget => kernel_ret(crate::shmget(a0 as i32, a1 as usize, a2 as i32) as i64),
        libc::SYS_shmat => {
            let p = crate::shmat(a0 as i32, a1 as *const c_void, a2 as i32) as i64;
            kernel_ret(p)
        }
        libc::SYS_shmdt => kernel_ret(crate::shmdt(a0 as *const c_void) as i64),
        _ => kernel_ret(crate::shmctl(a0 as i32, a1 as i32, a2 as *mut c_void) as i64),
    };
    sys::set_errno(saved);
    regs[libc::REG_RAX as usize] = ret;
}

/// A libc-style result (-1 and errno) as the system call's (-errno).
#[cfg(target_arch = "x86_64")]
fn kernel_ret(v: i64) -> i64 {
    if v == -1 {
        -(sys::errno() as i64)
    } else {
        v
    }
}

/// A SIGSYS that is not ours: the program's handler, or its default action.
#[cfg(target_arch = "x86_64")]
fn to_program(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let h = PROG_HANDLER.load(Ordering::Acquire);
    match h {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // The default action (core dump): restore it and let the signal
            // arrive again once this handler returns.
            // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
            let sa: libc::sigaction = unsafe { std::mem::zeroed() };
            if let Some(f) = crate::real_sigaction() {
                // SAFETY: the real sigaction with a valid action.
                unsafe { f(libc::SIGSYS, &sa, std::ptr::null_mut()) };
            }
            // SAFETY: raise takes a signal number only.
            unsafe { libc::raise(libc::SIGSYS) };
        }
        _ => {
            if PROG_FLAGS.load(Ordering::Acquire) & libc::SA_SIGINFO != 0 {
                // SAFETY: h is the handler the program installed with SA_SIGINFO,
                // called as the kernel would.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = unsafe { std::mem::transmute(h) };
                f(sig, info, uctx);
            } else {
                // SAFETY: h is the program's one-argument handler.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
extern "C" fn on_sigsys(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {}

/// `sigaction(SIGSYS, act, old)` while trap mode is on: the program's disposition
/// is kept here, and the handler stays ours. Returns 0 or -1 with errno.
pub fn program_sigaction(act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if !old.is_null() {
        // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
        let mut o: libc::sigaction = unsafe { std::mem::zeroed() };
        o.sa_sigaction = PROG_HANDLER.load(Ordering::Acquire);
        o.sa_flags = PROG_FLAGS.load(Ordering::Acquire);
        let words = [PROG_MASK[0].load(Ordering::Acquire), PROG_MASK[1].load(Ordering::Acquire)];
        let mut mask = [0u8; 16];
        mask[..8].copy_from_slice(&words[0].to_ne_bytes());
        mask[8..].copy_from_slice(&words[1].to_ne_bytes());
        let bytes = sigaction_bytes_mut(&mut o);
        bytes[MASK_OFF..MASK_OFF + 16].copy_from_slice(&mask);
        if sys::copy_to_user(old as usize, sigaction_bytes_mut(&mut o)).is_err() {
            sys::set_errno(libc::EFAULT);
            return -1;
        }
    }
    if !act.is_null() {
        // SAFETY: as above.
        let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
        if sys::copy_from_user(sigaction_bytes_mut(&mut a), act as usize).is_err() {
            sys::set_errno(libc::EFAULT);
            return -1;
        }
        let bytes = sigaction_bytes_mut(&mut a);
        let w0 = u64::from_ne_bytes(bytes[MASK_OFF..MASK_OFF + 8].try_into().unwrap_or_default());
        let w1 = u64::from_ne_bytes(bytes[MASK_OFF + 8..MASK_OFF + 16].try_into().unwrap_or_default());
        PROG_MASK[0].store(w0, Ordering::Release);
        PROG_MASK[1].store(w1, Ordering::Release);
        PROG_FLAGS.store(a.sa_flags, Ordering::Release);
        PROG_HANDLER.store(a.sa_sigaction, Ordering::Release);
    }
    0
}

/// `signal(SIGSYS, h)` and its kin while trap mode is on: the previous handler.
pub fn program_signal(h: libc::sighandler_t) -> libc::sighandler_t {
    PROG_FLAGS.store(0, Ordering::Release);
    PROG_HANDLER.swap(h, Ordering::AcqRel)
}

/// Offset of sa_mask in glibc's struct sigaction (after the handler word).
const MASK_OFF: usize = std::mem::size_of::<usize>();

fn sigaction_bytes_mut(a: &mut libc::sigaction) -> &mut [u8] {
    // SAFETY: a sigaction is plain C data: viewing its bytes is valid, for as
    // long as the borrow of `a`.
    unsafe { std::slice::from_raw_parts_mut(a as *mut libc::sigaction as *mut u8, std::mem::size_of::<libc::sigaction>()) }
}
