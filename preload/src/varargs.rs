//! `execl`, `execlp` and `execle`: the exec calls whose arguments are a
//! NULL-terminated variadic list. libc implements them by calling its own
//! `execve` internally, past any interposer, so without these entry points an
//! exec made through them would end the process's attaches only when the
//! server noticed the closed connection, after the new image may already have
//! run (S121).
//!
//! Stable Rust cannot define a C-variadic function, so each entry point is a
//! small naked trampoline. It stores the argument registers that may hold list
//! elements in a block on its stack and calls [`collect`] with that block and
//! the address of the caller's stack arguments, which continue the list. On
//! both supported ABIs (x86-64 System V and AAPCS64 as Linux uses it) variadic
//! pointer arguments travel exactly like named ones: in the integer argument
//! registers in order, then on the stack in 8-byte slots.
//!
//! [`collect`] gathers the list into an array and calls the `execv`, `execvp`
//! or `execve` hook, which ends the registration and forwards to libc.

use libc::{c_char, c_int};

/// How the list ends and which vector call it becomes.
const EXECL: usize = 0; // execl(path, arg0, ..., NULL)          -> execv
const EXECLP: usize = 1; // execlp(file, arg0, ..., NULL)        -> execvp
const EXECLE: usize = 2; // execle(path, arg0, ..., NULL, envp)  -> execve

/// Pointers kept on the stack before the array moves to the heap: a list that
/// long is rare, and the stack keeps the common case free of malloc (these
/// calls are async-signal-safe in libc and are made between fork and exec).
const INLINE: usize = 256;

/// The variadic list as the trampoline left it: `regs[..nregs]`, then the
/// caller's stack slots from `stack` on.
struct List {
    regs: *const *const c_char,
    nregs: usize,
    stack: *const *const c_char,
}

impl List {
    /// Element `i` of the list.
    ///
    /// # Safety
    /// `i` must not pass the element after the list's NULL terminator (for
    /// execle, the environment pointer), all of which the caller passed.
    unsafe fn get(&self, i: usize) -> *const c_char {
        // SAFETY: per the caller's promise the slot holds an argument the
        // program passed; the register block and the caller's argument area
        // stay alive until `collect` returns.
        unsafe {
            if i < self.nregs {
                self.regs.add(i).read()
            } else {
                self.stack.add(i - self.nregs).read()
            }
        }
    }
}

/// Called by the trampolines: `first` is the path or file argument, the list
/// starts with arg0.
///
/// # Safety
/// `regs` points at `nregs` saved argument registers and `stack` at the
/// caller's stack arguments, together holding a NULL-terminated list (and for
/// execle one more pointer), as the C prototypes of these calls require.
unsafe extern "C" fn collect(first: *const c_char, regs: *const *const c_char, nregs: usize, stack: *const *const c_char, kind: usize) -> c_int {
    let list = List { regs, nregs, stack };
    let mut n = 0;
    // SAFETY: reading up to and including the NULL the caller terminated the
    // list with.
    while !unsafe { list.get(n) }.is_null() {
        n += 1;
    }
    // SAFETY: for execle the environment pointer follows the NULL.
    let envp = if kind == EXECLE { unsafe { list.get(n + 1) }.cast::<*const c_char>() } else { std::ptr::null() };
    let mut inline = [std::ptr::null::<c_char>(); INLINE];
    let mut heap = Vec::new();
    let argv: &mut [*const c_char] = if n < INLINE {
        &mut inline[..=n]
    } else {
        heap.resize(n + 1, std::ptr::null());
        &mut heap
    };
    for (i, slot) in argv.iter_mut().take(n).enumerate() {
        // SAFETY: i < n, inside the list.
        *slot = unsafe { list.get(i) };
    }
    let argv = argv.as_ptr();
    match kind {
        EXECL => crate::execv(first, argv),
        EXECLP => crate::execvp(first, argv),
        _ => crate::execve(first, argv, envp),
    }
}

/// Defines one variadic exec entry point as a trampoline into [`collect`].
macro_rules! trampoline {
    ($name:ident, $kind:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[no_mangle]
        /// The C variadic call of the same name (see the module comment).
        ///
        /// # Safety
        /// Called from C with the libc prototype of this function.
        pub unsafe extern "C" fn $name() -> c_int {
            // rdi holds the path; rsi, rdx, rcx, r8 and r9 the first five list
            // elements, the rest follow the return address. 40 bytes keep rsp
            // 16-byte aligned at the call.
            std::arch::naked_asm!(
                "sub rsp, 40",
                "mov [rsp], rsi",
                "mov [rsp + 8], rdx",
                "mov [rsp + 16], rcx",
                "mov [rsp + 24], r8",
                "mov [rsp + 32], r9",
                "mov rsi, rsp",
                "mov edx, 5",
                "lea rcx, [rsp + 48]",
                "mov r8d, {kind}",
                "call {collect}",
                "add rsp, 40",
                "ret",
                kind = const $kind,
                collect = sym collect,
            )
        }

        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        #[no_mangle]
        /// The C variadic call of the same name (see the module comment).
        ///
        /// # Safety
        /// Called from C with the libc prototype of this function.
        pub unsafe extern "C" fn $name() -> c_int {
            // x0 holds the path; x1..x7 the first seven list elements, the
            // rest are at sp on entry. The frame keeps sp 16-byte aligned.
            std::arch::naked_asm!(
                "stp x29, x30, [sp, #-80]!",
                "mov x29, sp",
                "stp x1, x2, [sp, #16]",
                "stp x3, x4, [sp, #32]",
                "stp x5, x6, [sp, #48]",
                "str x7, [sp, #64]",
                "add x1, sp, #16",
                "mov x2, #7",
                "add x3, sp, #80",
                "mov x4, #{kind}",
                "bl {collect}",
                "ldp x29, x30, [sp], #80",
                "ret",
                kind = const $kind,
                collect = sym collect,
            )
        }
    };
}

trampoline!(execl, EXECL);
trampoline!(execlp, EXECLP);
trampoline!(execle, EXECLE);
