//! Reaching calls that bypass the dynamic symbol lookup.
//!
//! A library loaded with `dlopen(..., RTLD_DEEPBIND)` binds `shmget` and the
//! others to libc inside its own lookup scope, and code can fetch them with
//! `dlsym` on libc's own handle; a library loaded by `dlmopen` into a new link-map
//! namespace gets a copy of libc of its own. None of these calls pass through the
//! preloaded symbols. So, when this process emulates, the entry of each of libc's
//! four SysV shm functions is rewritten into a jump to the hook of the same name:
//! in the libc the process started with (at load), and in each libc copy a
//! `dlmopen` brings in (after it returns). Every caller of those functions then
//! reaches shmshim, whatever the symbol lookup said.
//!
//! The rewrite needs x86-64 (13 bytes: `movabs r11, hook; jmp r11`, r11 being a
//! scratch register at a call), a function at least that long (checked against
//! its symbol size), and a kernel that lets the process make a text page
//! writable for a moment (a copy-on-write page of libc: 4 KiB per process). Where
//! any is missing, nothing is rewritten and those calls go to the kernel as
//! before (README, Known differences).
//!
//! Errors set errno through libc's `__errno_location`; a libc copy in another
//! namespace has its own errno, so each patched copy's `__errno_location` is
//! registered with `sys::also_set_errno_at`.

use libc::{c_char, c_int, c_void};
use shmshim_core::sys;
use std::sync::atomic::{AtomicUsize, Ordering};

/// dladdr1's flag for "the symbol table entry" (<dlfcn.h>).
const RTLD_DL_SYMENT: c_int = 1;

/// The functions rewritten, with the hook each jumps to.
fn targets() -> [(&'static std::ffi::CStr, usize); 4] {
    [
        (c"shmget", crate::shmget as *const () as usize),
        (c"shmat", crate::shmat as *const () as usize),
        (c"shmdt", crate::shmdt as *const () as usize),
        (c"shmctl", crate::shmctl as *const () as usize),
    ]
}

/// Load addresses of the libc copies already rewritten (0 = free entry).
static PATCHED: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

fn already(base: usize) -> bool {
    PATCHED.iter().any(|p| p.load(Ordering::Acquire) == base)
}

fn remember(base: usize) -> bool {
    PATCHED.iter().any(|p| p.compare_exchange(0, base, Ordering::AcqRel, Ordering::Acquire).is_ok())
}

/// The libc this library's own calls bind to: the one the process started with.
pub fn patch_base_libc() {
    let mut info: libc::Dl_info = empty_dl_info();
    // SAFETY: dladdr only reads the loader's tables; getpid's address is libc's.
    if unsafe { libc::dladdr(libc::getpid as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return;
    }
    // SAFETY: a NOLOAD dlopen of an object already loaded returns its handle and
    // loads nothing.
    let h = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if h.is_null() {
        return;
    }
    patch_libc(h, false);
    // SAFETY: drops the reference the NOLOAD dlopen took.
    unsafe { libc::dlclose(h) };
}

/// After a successful `dlmopen`: rewrites the libc of the namespace it loaded into,
/// if that is not the base namespace and its libc is new.
pub fn after_dlmopen(handle: *mut c_void, dlmopen: unsafe extern "C" fn(libc::Lmid_t, *const c_char, c_int) -> *mut c_void) {
    let mut lmid: libc::Lmid_t = 0;
    // SAFETY: handle is the live handle dlmopen just returned; RTLD_DI_LMID writes
    // one Lmid_t.
    if unsafe { libc::dlinfo(handle, libc::RTLD_DI_LMID, &mut lmid as *mut libc::Lmid_t as *mut c_void) } != 0 || lmid == libc::LM_ID_BASE {
        return;
    }
    // SAFETY: NOLOAD: the namespace's own libc, already loaded there, or NULL.
    let h = unsafe { dlmopen(lmid, c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if h.is_null() {
        return;
    }
    patch_libc(h, true);
    // SAFETY: drops the reference the NOLOAD dlmopen took.
    unsafe { libc::dlclose(h) };
}

fn empty_dl_info() -> libc::Dl_info {
    libc::Dl_info { dli_fname: std::ptr::null(), dli_fbase: std::ptr::null_mut(), dli_sname: std::ptr::null(), dli_saddr: std::ptr::null_mut() }
}

/// Rewrites the four functions of the libc behind handle `h`. `foreign`: a copy
/// in another namespace, whose errno is registered too.
fn patch_libc(h: *mut c_void, foreign: bool) {
    let mut found = Vec::new();
    let mut base = 0usize;
    for (name, hook) in targets() {
        // SAFETY: dlsym on a live handle only reads symbol tables.
        let f = unsafe { libc::dlsym(h, name.as_ptr()) } as usize;
        if f == 0 || f == hook {
            return;
        }
        let mut info = empty_dl_info();
        let mut sym: *const libc::Elf64_Sym = std::ptr::null();
        // SAFETY: dladdr1 with RTLD_DL_SYMENT stores a pointer to the symbol's
        // table entry (or NULL) in `sym`.
        let ok = unsafe { libc::dladdr1(f as *const c_void, &mut info, &mut sym as *mut *const libc::Elf64_Sym as *mut *mut c_void, RTLD_DL_SYMENT) };
        if ok == 0 || sym.is_null() {
            return;
        }
        // SAFETY: sym points into the object's mapped symbol table.
        let size = unsafe { (*sym).st_size } as usize;
        let b = info.dli_fbase as usize;
        if base == 0 {
            base = b;
        }
        // The four must be functions of one object, long enough for the jump.
        if b != base || size < JUMP_LEN || info.dli_saddr as usize != f {
            return;
        }
        found.push((f, hook));
    }
    if base == 0 || already(base) || !remember(base) {
        return;
    }
    if foreign {
        // SAFETY: dlsym on a live handle.
        let e = unsafe { libc::dlsym(h, c"__errno_location".as_ptr()) } as usize;
        if e != 0 {
            sys::also_set_errno_at(e);
        }
    }
    for (f, hook) in found {
        write_jump(f, hook);
    }
}

#[cfg(target_arch = "x86_64")]
const JUMP_LEN: usize = 13;
#[cfg(not(target_arch = "x86_64"))]
const JUMP_LEN: usize = usize::MAX;

/// `movabs r11, hook; jmp r11` at `f`.
#[cfg(target_arch = "x86_64")]
fn write_jump(f: usize, hook: usize) {
    let mut code = [0u8; JUMP_LEN];
    code[0] = 0x49; // REX.W + B
    code[1] = 0xbb; // mov r11, imm64
    code[2..10].copy_from_slice(&(hook as u64).to_le_bytes());
    code[10..13].copy_from_slice(&[0x41, 0xff, 0xe3]); // jmp r11
    let page = f & !(sys::PAGE - 1);
    let len = (f + JUMP_LEN).div_ceil(sys::PAGE) * sys::PAGE - page;
    // Writable and executable for the moment of the write, so that another
    // thread running code on the same page never faults; RW then RX where the
    // kernel refuses W+X.
    let rx = libc::PROT_READ | libc::PROT_EXEC;
    // SAFETY: the pages hold libc's code, which stays readable (and executable
    // where the kernel allows W+X) while this thread writes it.
    if unsafe { sys::protect_text(page, len, rx | libc::PROT_WRITE) }.is_err()
        // SAFETY: as above; executable again below.
        && unsafe { sys::protect_text(page, len, libc::PROT_READ | libc::PROT_WRITE) }.is_err()
    {
        return;
    }
    // SAFETY: f is the entry of a libc function of at least JUMP_LEN bytes
    // (checked by the caller against its symbol size), on pages made writable
    // above; the bytes replace its code with a jump to the hook of the same
    // prototype. A thread that enters it during the write is the one race left:
    // the rewrite happens at load and right after dlmopen, before anything calls
    // the function.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), f as *mut u8, JUMP_LEN) };
    // SAFETY: restores the code pages' protection.
    let _ = unsafe { sys::protect_text(page, len, rx) };
}

#[cfg(not(target_arch = "x86_64"))]
fn write_jump(_f: usize, _hook: usize) {}
