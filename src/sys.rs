//! Thin, typed wrappers over the raw system calls shmshim needs.
//!
//! Every `unsafe` block of the crate that talks to the kernel lives here, each with
//! a `// SAFETY:` comment. Calls whose libc symbol the preload library interposes
//! (`syscall`, `open`, `mmap`, `munmap`, `mprotect`, `mremap`, `madvise`,
//! `waitpid`) are made with the system-call instruction itself (`raw`), never
//! through libc: within the library those symbols resolve to its own hooks.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

/// The page size shmshim assumes (x86-64 and aarch64 with 4 KiB pages).
pub const PAGE: usize = 4096;

/// An errno value. `Errno(0)` is never constructed for an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type SysResult<T> = Result<T, Errno>;

impl Errno {
    pub fn last() -> Errno {
        Errno(errno())
    }
    pub fn name(self) -> &'static str {
        errno_name(self.0)
    }
}

pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as above; writing errno is what the C ABI expects of us.
    unsafe { *libc::__errno_location() = e }
}

/// Sets a SysV call's failure errno: in this libc and in every other libc copy
/// whose calls reach the hooks (also_set_errno_at), as the caller may read either.
pub fn set_call_errno(e: i32) {
    set_errno(e);
    for f in EXTRA_ERRNO.iter() {
        let f = f.load(Ordering::Acquire);
        if f == 0 {
            break;
        }
        // SAFETY: f is the `__errno_location` of another libc copy in this
        // process (also_set_errno_at), which returns this thread's errno there.
        unsafe { *std::mem::transmute::<usize, unsafe extern "C" fn() -> *mut i32>(f)() = e }
    }
}

/// `__errno_location` of other libc copies in this process (libraries loaded by
/// dlmopen, whose calls reach the hooks): errors are set there too.
static EXTRA_ERRNO: [std::sync::atomic::AtomicUsize; 8] = [const { std::sync::atomic::AtomicUsize::new(0) }; 8];

/// Registers another libc copy's `__errno_location` (its address).
pub fn also_set_errno_at(f: usize) {
    for slot in EXTRA_ERRNO.iter() {
        match slot.compare_exchange(0, f, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(v) if v == f => return,
            Err(_) => {}
        }
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        0 => "0",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EIDRM => "EIDRM",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EOWNERDEAD => "EOWNERDEAD",
        libc::EDEADLK => "EDEADLK",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        _ => "E?",
    }
}

/// A system call made with the `syscall` instruction itself (`svc 0` on
/// aarch64), never through libc's `syscall()`: this library exports a `syscall`
/// hook of its own, which libc's symbol would resolve to. Returns -1 and sets
/// errno on failure, as syscall(2) does. Arguments beyond the call's are ignored.
///
/// # Safety
/// As for the system call made: pointers must be valid for what it reads and
/// writes, and memory it changes must not be in use.
pub unsafe fn raw(n: libc::c_long, args: &[usize]) -> libc::c_long {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller upholds the call's contract; the instruction clobbers
    // only rcx and r11, declared here.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a(0), in("rsi") a(1), in("rdx") a(2),
            in("r10") a(3), in("r8") a(4), in("r9") a(5), lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the caller upholds the call's contract; svc clobbers nothing else.
    unsafe {
        std::arch::asm!("svc 0", in("x8") n as isize, inlateout("x0") a(0) as isize => ret, in("x1") a(1), in("x2") a(2),
            in("x3") a(3), in("x4") a(4), in("x5") a(5), options(nostack));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: as the caller guarantees (other architectures go through libc).
    let ret = unsafe { libc::syscall(n, a(0), a(1), a(2), a(3), a(4), a(5)) } as isize;
    if (-4095..0).contains(&ret) {
        set_errno(-ret as i32);
        return -1;
    }
    ret as libc::c_long
}

fn check(r: libc::c_long) -> SysResult<libc::c_long> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Retries a call while it fails with EINTR.
fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno(libc::EINTR)) => continue,
            r => return r,
        }
    }
}

// ---------------------------------------------------------------- memory maps

/// mmap(2) by raw syscall. Returns the address.
///
/// # Safety
/// With `MAP_FIXED` the new mapping replaces whatever was mapped in the range: the
/// caller must own that range (no Rust object may live there).
pub unsafe fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: RawFd, off: i64) -> SysResult<usize> {
    // SAFETY: a raw mmap call; the kernel validates every argument; replacing
    // memory is the caller's responsibility (see above).
    let r = unsafe { raw(libc::SYS_mmap, &[addr, len, prot as usize, flags as usize, fd as usize, off as usize]) };
    if r == -1 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// munmap(2) by raw syscall.
///
/// # Safety
/// Nothing may still refer to memory in the range.
pub unsafe fn munmap(addr: usize, len: usize) -> SysResult<()> {
    // SAFETY: the caller guarantees nothing refers to the range.
    check(unsafe { raw(libc::SYS_munmap, &[addr, len]) }).map(|_| ())
}

/// mprotect(2) by raw syscall.
///
/// # Safety
/// Removing access from memory that Rust code still uses is the caller's to rule out.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> SysResult<()> {
    // SAFETY: as the caller guarantees.
    check(unsafe { raw(libc::SYS_mprotect, &[addr, len, prot as usize]) }).map(|_| ())
}

/// mremap(2) by raw syscall.
///
/// # Safety
/// As for `munmap` (the old range may go) and `mmap` with MAP_FIXED (the new one).
pub unsafe fn mremap(old: usize, old_len: usize, new_len: usize, flags: i32, new_addr: usize) -> SysResult<usize> {
    // SAFETY: as the caller guarantees.
    let r = unsafe { raw(libc::SYS_mremap, &[old, old_len, new_len, flags as usize, new_addr]) };
    if r == -1 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

/// madvise(2) by raw syscall (the libc symbol is interposed by the shim).
pub fn madvise(addr: usize, len: usize, advice: i32) -> bool {
    // SAFETY: advice on a range of our own mappings; no memory is passed.
    unsafe { raw(libc::SYS_madvise, &[addr, len, advice as usize]) == 0 }
}

/// Whether any mapping of this process intersects `[start, end)` (from
/// /proc/self/maps; used only on a rare error path).
pub fn range_has_mapping(start: usize, end: usize) -> bool {
    let Some(maps) = read_small("/proc/self/maps") else { return false };
    maps.lines().any(|l| {
        let mut it = l.split(['-', ' ']);
        let lo = it.next().and_then(|v| usize::from_str_radix(v, 16).ok());
        let hi = it.next().and_then(|v| usize::from_str_radix(v, 16).ok());
        matches!((lo, hi), (Some(lo), Some(hi)) if lo < end && hi > start)
    })
}

// ------------------------------------------------------- user-pointer copies

/// Copies `src` to the caller's pointer `dst` the way the kernel's copy_to_user does:
/// a bad pointer gives EFAULT instead of a crash (SEMANTICS S84, S100, S101, S103).
pub fn copy_to_user(dst: usize, src: &[u8]) -> SysResult<()> {
    if dst == 0 {
        return Err(Errno(libc::EFAULT));
    }
    if on_own_stack(dst, src.len()) {
        // SAFETY: on_own_stack proved the destination is mapped, writable stack
        // memory above our own frame, and it cannot overlap `src` (which is in our
        // frame or below).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        return Ok(());
    }
    let local = libc::iovec { iov_base: src.as_ptr() as *mut _, iov_len: src.len() };
    let remote = libc::iovec { iov_base: dst as *mut _, iov_len: src.len() };
    // SAFETY: process_vm_writev on our own pid writes through `dst` with the kernel's
    // fault handling: an unmapped or read-only destination yields EFAULT, never SIGSEGV.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == src.len() as isize {
        return Ok(());
    }
    if n < 0 {
        let e = errno();
        if e == libc::ENOSYS || e == libc::EPERM {
            return copy_via_pipe(src.as_ptr() as usize, dst, src.len());
        }
    }
    Err(Errno(libc::EFAULT))
}

/// Copies from the caller's pointer `src` into `dst` like copy_from_user (S90).
pub fn copy_from_user(dst: &mut [u8], src: usize) -> SysResult<()> {
    if src == 0 {
        return Err(Errno(libc::EFAULT));
    }
    let local = libc::iovec { iov_base: dst.as_mut_ptr() as *mut _, iov_len: dst.len() };
    let remote = libc::iovec { iov_base: src as *mut _, iov_len: dst.len() };
    // SAFETY: process_vm_readv reads from `src` with kernel fault handling (EFAULT).
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == dst.len() as isize {
        return Ok(());
    }
    if n < 0 {
        let e = errno();
        if e == libc::ENOSYS || e == libc::EPERM {
            return copy_via_pipe(src, dst.as_mut_ptr() as usize, dst.len());
        }
    }
    Err(Errno(libc::EFAULT))
}

/// Fallback where process_vm_* is filtered: write(2) from the source into a pipe and
/// read(2) into the destination; both report EFAULT for bad user memory.
fn copy_via_pipe(src: usize, dst: usize, len: usize) -> SysResult<()> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Errno::last());
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; we own them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut done = 0;
    while done < len {
        let chunk = (len - done).min(4096);
        // SAFETY: the kernel validates the user pointer and returns EFAULT if bad.
        let n = unsafe { libc::write(w.as_raw_fd(), (src + done) as *const _, chunk) };
        if n <= 0 {
            return Err(Errno(libc::EFAULT));
        }
        // SAFETY: as above, for the destination.
        let m = unsafe { libc::read(r.as_raw_fd(), (dst + done) as *mut _, n as usize) };
        if m != n {
            return Err(Errno(libc::EFAULT));
        }
        done += n as usize;
    }
    Ok(())
}

// ----------------------------------------------------------------- files

pub fn open(path: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    retry(|| {
        // SAFETY: path is NUL-terminated; the call writes no memory of ours.
        owned(unsafe { raw(libc::SYS_openat, &[libc::AT_FDCWD as usize, path.as_ptr() as usize, (flags | libc::O_CLOEXEC) as usize, mode as usize]) } as i32)
    })
}

pub fn memfd_create(name: &CStr, flags: u32) -> SysResult<OwnedFd> {
    // SAFETY: name is NUL-terminated; the returned fd is new and owned by us.
    let fd = unsafe { raw(libc::SYS_memfd_create, &[name.as_ptr() as usize, flags as usize]) };
    if fd < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: fresh descriptor from memfd_create.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// lseek(2): the new offset.
pub fn lseek(fd: RawFd, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain syscall on a descriptor; no memory is passed.
    check(unsafe { libc::lseek(fd, off, whence) } as libc::c_long)
}

pub fn ftruncate(fd: RawFd, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a descriptor; no memory is passed.
    retry(|| check(unsafe { libc::ftruncate(fd, len as i64) } as libc::c_long).map(|_| ()))
}

/// fallocate(2) of `[off, off+len)`: mode 0 allocates (and may extend the file),
/// so that later writes through a mapping cannot fail for want of space;
/// FALLOC_FL_KEEP_SIZE allocates the holes without changing the size. Pages that
/// exist are left as they are either way.
pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a descriptor; no memory is passed.
    retry(|| check(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) } as libc::c_long).map(|_| ()))
}

/// One page of zeros, and 256 iovecs naming it: static, so a fill touches no
/// stack or heap page (after a fork every such page would fault to be copied).
static ZEROS: [u8; 4096] = [0; 4096];
const ZERO_IOVS: usize = 256;
struct ZeroIovs([libc::iovec; ZERO_IOVS]);
// SAFETY: the iovecs point at ZEROS, immutable for the life of the program; they are
// only ever read (by the kernel, for writes).
unsafe impl Sync for ZeroIovs {}
static ZERO_IOV: ZeroIovs = ZeroIovs([libc::iovec { iov_base: ZEROS.as_ptr() as *mut libc::c_void, iov_len: ZEROS.len() }; ZERO_IOVS]);

/// Writes zeros over `[off, off+len)` of a file with pwritev(2), 1 MiB per call. A
/// shmem file's pages written this way are up to date, so read faults on them map
/// sixteen at a time. Overwrites whatever is there: callers make sure nothing else
/// writes the range meanwhile.
pub fn pwrite_zeros(fd: RawFd, off: u64, len: u64) -> SysResult<()> {
    let page = ZEROS.len() as u64;
    let end = off.checked_add(len).ok_or(Errno(libc::EINVAL))?;
    let mut at = off;
    while at < end {
        let pages = ((end - at) / page).min(ZERO_IOVS as u64) as i32;
        let r = if pages > 0 {
            // SAFETY: the iovecs point into ZEROS with its length; the kernel only
            // reads them.
            retry(|| check(unsafe { libc::pwritev(fd, ZERO_IOV.0.as_ptr(), pages, at as i64) } as libc::c_long))?
        } else {
            // SAFETY: ZEROS is readable for the (less than a page) length given.
            retry(|| check(unsafe { libc::pwrite(fd, ZEROS.as_ptr() as *const libc::c_void, (end - at) as usize, at as i64) } as libc::c_long))?
        };
        if r == 0 {
            return Err(Errno(libc::EIO));
        }
        at += r as u64;
    }
    Ok(())
}

/// fstatat(2) of the entry named by a number in a directory (`/proc/PID/fd/N`),
/// following it: no path is formatted or allocated.
pub fn fstatat_number(dir: RawFd, n: i32) -> SysResult<libc::stat> {
    let mut name = [0u8; 12];
    let mut digits = [0u8; 10];
    let (mut v, mut k) = (n.max(0) as u32, 0);
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..k].iter().rev().enumerate() {
        name[i] = *d;
    }
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated (at most 10 digits in 12 zeroed bytes) and st
    // a writable stat buffer.
    check(unsafe { raw(libc::SYS_newfstatat, &[dir as usize, name.as_ptr() as usize, &mut st as *mut libc::stat as usize, 0]) })?;
    Ok(st)
}

/// Whether this process has one thread: /proc/self/task links its directory, its
/// parent and one directory per thread. False when it cannot tell.
pub fn single_threaded() -> bool {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let path = c"/proc/self/task";
    // SAFETY: path is NUL-terminated and st a writable stat buffer.
    let r = unsafe { raw(libc::SYS_newfstatat, &[libc::AT_FDCWD as usize, path.as_ptr() as usize, &mut st as *mut libc::stat as usize, 0]) };
    r == 0 && st.st_nlink == 3
}

/// Whether any page of the mapped, page-aligned range `[addr, addr+len)` is
/// resident (for a shared file mapping: in the file's page cache), by mincore(2)
/// in chunks. None if mincore fails (a range not wholly mapped).
pub fn any_resident(addr: usize, len: usize) -> Option<bool> {
    const CHUNK: usize = 1024;
    let mut vec = [0u8; CHUNK];
    let mut at = addr;
    let end = addr.checked_add(len)?;
    while at < end {
        let n = ((end - at).div_ceil(4096)).min(CHUNK);
        // SAFETY: mincore writes one byte per page of the range into `vec`, which
        // has room for `n` pages; the range is only inspected.
        let r = unsafe { libc::mincore(at as *mut libc::c_void, n * 4096, vec.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        if vec[..n].iter().any(|b| b & 1 != 0) {
            return Some(true);
        }
        at += n * 4096;
    }
    Some(false)
}

pub fn link(from: &CStr, to: &CStr) -> SysResult<()> {
    // SAFETY: both are NUL-terminated paths.
    check(unsafe { libc::link(from.as_ptr(), to.as_ptr()) } as libc::c_long).map(|_| ())
}

/// A close-on-exec duplicate at or above `min`.
pub fn dup_at_least(fd: RawFd, min: i32) -> SysResult<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor that we own.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

pub fn dup(fd: RawFd) -> SysResult<OwnedFd> {
    dup_at_least(fd, 0)
}

/// fstat(2) by its own system call (libc's goes through the slower
/// newfstatat(fd, "", AT_EMPTY_PATH)).
pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a properly sized, writable stat buffer.
    check(unsafe { raw(libc::SYS_fstat, &[fd as usize, &mut st as *mut libc::stat as usize]) })?;
    Ok(st)
}

/// write(2) of the whole buffer (retrying short writes and EINTR).
pub fn write_all(fd: RawFd, buf: &[u8]) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf[done..] is valid readable memory of the given length.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr() as *const _, buf.len() - done) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(Errno::last());
        }
        done += n as usize;
    }
    Ok(())
}

pub fn pwrite_all(fd: RawFd, buf: &[u8], off: u64) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf[done..] is valid readable memory of the given length.
        let n = unsafe { libc::pwrite(fd, buf[done..].as_ptr() as *const _, buf.len() - done, (off + done as u64) as i64) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(Errno::last());
        }
        done += n as usize;
    }
    Ok(())
}

/// Closes a raw descriptor we own (used where the fd number is stored in shared state).
pub fn close(fd: RawFd) {
    // SAFETY: callers only pass descriptors they own and no longer use.
    unsafe { libc::close(fd) };
}

// --------------------------------------------------- unix datagram sockets

fn owned(fd: i32) -> SysResult<OwnedFd> {
    if fd < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: a descriptor the kernel just created for us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A unix socket of type `ty` (SOCK_SEQPACKET, SOCK_DGRAM), close-on-exec.
pub fn socket_unix(ty: i32) -> SysResult<OwnedFd> {
    // SAFETY: creates a new descriptor that we own.
    owned(unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) })
}

/// A connected pair of unix sockets of type `ty`, close-on-exec.
pub fn socketpair_unix(ty: i32) -> SysResult<(OwnedFd, OwnedFd)> {
    let mut sv = [0; 2];
    // SAFETY: sv is a valid two-element array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok((owned(sv[0])?, owned(sv[1])?))
}

pub fn listen(fd: RawFd, backlog: i32) -> SysResult<()> {
    // SAFETY: plain syscall on a descriptor.
    check(unsafe { libc::listen(fd, backlog) } as libc::c_long).map(|_| ())
}

/// accept4 with CLOEXEC | NONBLOCK.
pub fn accept(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: no address is asked for; the new descriptor is ours.
    owned(unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) })
}

/// The credentials the kernel recorded for a socket's peer when it connected.
pub fn peercred(fd: RawFd) -> SysResult<libc::ucred> {
    let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: c and len are valid, correctly sized out-parameters.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut c as *mut _ as *mut _, &mut len) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(c)
}

/// Sets (`on`) or clears O_NONBLOCK.
pub fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: fcntl flag calls on a descriptor; no memory is passed.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK });
        }
    }
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: p is a valid two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Errno::last());
    }
    Ok((owned(p[0])?, owned(p[1])?))
}

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd_open(pid: i32) -> SysResult<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is ours.
    let r = unsafe { raw(libc::SYS_pidfd_open, &[pid as usize, 0]) };
    owned(if r < 0 { -1 } else { r as i32 })
}

/// A close-on-exec duplicate of descriptor `fd` of the process `pidfd` names
/// (pidfd_getfd(2): needs ptrace access to it, as /proc/PID/fd does).
pub fn pidfd_getfd(pidfd: RawFd, fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: plain syscall; the new descriptor is ours.
    let r = unsafe { raw(libc::SYS_pidfd_getfd, &[pidfd as usize, fd as usize, 0]) };
    owned(if r < 0 { -1 } else { r as i32 })
}

/// Whether the process a pidfd names is still running.
pub fn pidfd_alive(fd: RawFd) -> bool {
    // SAFETY: signal 0 through a pidfd only checks for existence.
    unsafe { raw(libc::SYS_pidfd_send_signal, &[fd as usize, 0, 0, 0]) == 0 }
}

// ---------------------------------------------------------------- epoll

pub fn epoll_create() -> SysResult<OwnedFd> {
    // SAFETY: creates a new descriptor that we own.
    owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

pub fn epoll_add(ep: RawFd, fd: RawFd, events: u32, data: u64) -> SysResult<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event.
    check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } as libc::c_long).map(|_| ())
}

pub fn epoll_del(ep: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: ev is a valid (ignored) epoll_event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, &mut ev) };
}

/// epoll_wait; Ok(number of events written to `out`).
pub fn epoll_wait(ep: RawFd, out: &mut [libc::epoll_event], timeout_ms: i32) -> SysResult<usize> {
    // SAFETY: out is a valid, writable array of out.len() events.
    let r = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), out.len() as i32, timeout_ms) };
    check(r as libc::c_long).map(|n| n as usize)
}

// ---------------------------------------------------------------- inotify

pub fn inotify_watch(path: &std::path::Path, mask: u32) -> SysResult<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    // SAFETY: creates a new descriptor that we own.
    let fd = owned(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
        return Err(Errno::last());
    }
    Ok(fd)
}

/// Reads and discards whatever is pending on a descriptor (inotify events, pipe bytes).
pub fn drain(fd: RawFd) {
    let mut b = [0u8; 4096];
    // SAFETY: b is a valid writable buffer of its length.
    while unsafe { libc::read(fd, b.as_mut_ptr() as *mut _, b.len()) } > 0 {}
}

pub fn sockaddr_un(path: &std::path::Path) -> SysResult<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as u16;
    let b = path.as_os_str().as_bytes();
    if b.len() >= sa.sun_path.len() {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    for (i, c) in b.iter().enumerate() {
        sa.sun_path[i] = *c as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + b.len() + 1) as libc::socklen_t;
    Ok((sa, len))
}

pub fn bind(fd: RawFd, path: &std::path::Path) -> SysResult<()> {
    let (sa, len) = sockaddr_un(path)?;
    // SAFETY: sa/len describe a valid sockaddr_un.
    let r = unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) };
    if r != 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

pub fn connect(fd: RawFd, path: &std::path::Path) -> SysResult<()> {
    let (sa, len) = sockaddr_un(path)?;
    retry(|| {
        // SAFETY: sa/len describe a valid sockaddr_un.
        let r = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
        if r != 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    })
}

/// Sends one datagram with up to four descriptors attached (SCM_RIGHTS).
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd], flags: i32) -> SysResult<()> {
    let mut cbuf = [0u64; 8];
    let iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr is plain old data; all pointers below point into live locals,
    // and the control buffer (64 bytes) is large enough for four descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &iov as *const _ as *mut _;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            assert!(fds.len() <= 4);
            let space = libc::CMSG_SPACE((fds.len() * 4) as u32) as usize;
            msg.msg_control = cbuf.as_mut_ptr() as *mut _;
            msg.msg_controllen = space;
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            let p = libc::CMSG_DATA(cm) as *mut RawFd;
            for (i, fd) in fds.iter().enumerate() {
                p.add(i).write_unaligned(*fd);
            }
        }
        retry(|| check(libc::sendmsg(sock, &msg, flags | libc::MSG_NOSIGNAL) as libc::c_long)).map(|_| ())
    }
}

/// A received datagram: its bytes, the descriptors it carried, and the sender's
/// credentials when the socket has SO_PASSCRED.
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    pub cred: Option<libc::ucred>,
}

pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], flags: i32) -> SysResult<Received> {
    let mut cbuf = [0u64; 16];
    let iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut _, iov_len: buf.len() };
    // SAFETY: as in send_with_fds; the kernel writes at most msg_controllen bytes of
    // control data and we walk it with the CMSG_* helpers. Descriptors received are
    // new and owned by us.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &iov as *const _ as *mut _;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut _;
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = retry(|| check(libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) as libc::c_long))?;
        let mut out = Received { len: n as usize, fds: Vec::new(), cred: None };
        let mut cm = libc::CMSG_FIRSTHDR(&msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                let cnt = ((*cm).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(cm) as *const RawFd;
                for i in 0..cnt {
                    out.fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            } else if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_CREDENTIALS {
                out.cred = Some((libc::CMSG_DATA(cm) as *const libc::ucred).read_unaligned());
            }
            cm = libc::CMSG_NXTHDR(&msg, cm);
        }
        Ok(out)
    }
}

pub fn set_passcred(sock: RawFd) {
    let one: i32 = 1;
    // SAFETY: a valid int option value.
    unsafe {
        libc::setsockopt(sock, libc::SOL_SOCKET, libc::SO_PASSCRED, &one as *const _ as *const _, 4);
    }
}

// ----------------------------------------------------------- credentials

/// Bumped by the shim's set*id/setgroups/capset hooks after every credential
/// change made through libc, so cached credentials are refreshed.
pub static CRED_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static CACHED_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CACHED_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// (euid, egid), cached until the next credential change made through the
/// shim's hooks. Two system calls saved on every SysV call.
pub fn eids() -> (u32, u32) {
    use std::sync::atomic::Ordering::Acquire;
    use std::sync::atomic::Ordering::Release;
    let gen = CRED_GEN.load(Acquire);
    if CACHED_GEN.load(Acquire) == gen {
        let v = CACHED_IDS.load(Acquire);
        return ((v >> 32) as u32, v as u32);
    }
    let (u, g) = (geteuid(), getegid());
    CACHED_IDS.store(((u as u64) << 32) | g as u64, Release);
    CACHED_GEN.store(gen, Release);
    (u, g)
}

thread_local! {
    static STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
    static CALLER_SP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Records where the program's own stack frames begin for the current hook call:
/// the address of a local of the exported hook function. Everything above it on
/// this thread's stack belongs to live frames of the program.
pub fn set_caller_sp(sp: usize) {
    CALLER_SP.with(|c| c.set(sp));
}

/// Whether `[addr, addr+len)` lies in the calling thread's stack, in the program's
/// live frames (above the hook's frame, below the stack's top): such memory is
/// mapped and writable, so it can be written directly, without the cost of
/// process_vm_writev. The typical `struct shmid_ds ds; shmctl(id, IPC_STAT, &ds)`
/// takes this path.
pub fn on_own_stack(addr: usize, len: usize) -> bool {
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    let floor = CALLER_SP.with(|c| c.get());
    let (lo, hi) = STACK.with(|s| {
        if s.get().1 == 0 {
            // pthread_getattr_np takes the thread's lock (and, for the main
            // thread, reads /proc/self/maps with stdio): a handler that called
            // it again meanwhile would wait for itself.
            let _quiet = block_signals();
            s.set(thread_stack());
        }
        s.get()
    });
    floor != 0 && sp >= lo && sp < hi && floor > sp && addr >= floor && addr.checked_add(len).map(|e| e <= hi).unwrap_or(false)
}

fn thread_stack() -> (usize, usize) {
    // SAFETY: pthread_getattr_np fills attr for the calling thread; we read the
    // stack bounds and destroy attr.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (usize::MAX, usize::MAX); // unknown: nothing counts as on the stack
        }
        let mut base: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut base, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if r != 0 {
            return (usize::MAX, usize::MAX);
        }
        (base as usize, base as usize + size)
    }
}

/// A word of private memory that the kernel zeroes in every fork child
/// (MADV_WIPEONFORK): once `arm`ed, `armed` tells the process that armed it from
/// a child made by any kind of fork, without a system call. A thread or a
/// `CLONE_VM` child shares the word, as it shares the rest of memory.
pub struct ForkToken(std::sync::atomic::AtomicUsize);

impl ForkToken {
    pub const fn new() -> ForkToken {
        ForkToken(std::sync::atomic::AtomicUsize::new(0))
    }

    fn word(&self) -> Option<&std::sync::atomic::AtomicU32> {
        use std::sync::atomic::Ordering;
        let mut p = self.0.load(Ordering::Acquire);
        if p == 0 {
            // SAFETY: a new private anonymous page; nothing else refers to it.
            let page = unsafe { mmap(0, 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) }.ok()?;
            let mine = if madvise(page, 4096, libc::MADV_WIPEONFORK) {
                page
            } else {
                // SAFETY: our own page, never published (kernel < 4.14 refuses the advice).
                let _ = unsafe { munmap(page, 4096) };
                usize::MAX
            };
            p = match self.0.compare_exchange(0, mine, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => mine,
                Err(other) => {
                    if mine != usize::MAX {
                        // SAFETY: our own page, never published: another thread won.
                        let _ = unsafe { munmap(page, 4096) };
                    }
                    other
                }
            };
        }
        if p == usize::MAX {
            return None;
        }
        // SAFETY: p is a page of this process's private memory that stays mapped for
        // the process's life; only this process writes it (the kernel zeroes it in
        // a fork child's copy), so a shared reference to an atomic in it is sound.
        Some(unsafe { &*(p as *const std::sync::atomic::AtomicU32) })
    }

    /// Marks the calling process.
    pub fn arm(&self) {
        if let Some(w) = self.word() {
            w.store(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// True only in the process that armed it (false where the kernel lacks
    /// MADV_WIPEONFORK: callers then compare pids).
    pub fn armed(&self) -> bool {
        self.word().map(|w| w.load(std::sync::atomic::Ordering::Acquire) == 1).unwrap_or(false)
    }
}

impl Default for ForkToken {
    fn default() -> Self {
        Self::new()
    }
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}

pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_gettid, &[]) as i32 }
}

pub fn geteuid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::getegid() }
}

pub fn getuid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::getuid() }
}

/// The filesystem gid (setfsgid(-1) reads it without changing it).
pub fn getfsgid() -> u32 {
    // SAFETY: setfsgid with an invalid id only returns the current value. By raw
    // syscall: the libc symbol is hooked and would count as a credential change.
    unsafe { raw(libc::SYS_setfsgid, &[u32::MAX as usize]) as u32 }
}

pub fn getgroups() -> Vec<u32> {
    let mut v = vec![0u32; 256];
    loop {
        // SAFETY: v has room for v.len() gids.
        let n = unsafe { libc::getgroups(v.len() as i32, v.as_mut_ptr()) };
        if n >= 0 {
            v.truncate(n as usize);
            return v;
        }
        if errno() != libc::EINVAL {
            return Vec::new();
        }
        let len = v.len() * 4;
        v.resize(len, 0);
    }
}

/// The calling thread's effective capability set (both 32-bit words).
pub fn effective_caps() -> u64 {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header { version: 0x20080522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with version 3 writes two Data records.
    let r = unsafe { raw(libc::SYS_capget, &[&mut hdr as *mut _ as usize, data.as_mut_ptr() as usize]) };
    if r != 0 {
        return 0;
    }
    data[0].effective as u64 | ((data[1].effective as u64) << 32)
}

/// (soft, hard) RLIMIT_FSIZE (RLIM_INFINITY: none); (0, 0) if unknown.
pub fn rlimit_fsize() -> (u64, u64) {
    // SAFETY: an all-zero rlimit is a valid value of this plain C struct.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: rl is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl) } != 0 {
        return (0, 0);
    }
    (rl.rlim_cur, rl.rlim_max)
}

fn set_rlimit_fsize(soft: u64, hard: u64) -> SysResult<()> {
    let rl = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: rl is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &rl) } as libc::c_long).map(|_| ())
}

/// Whether a file of `len` bytes is within `limit` (an RLIMIT_FSIZE value).
fn within(limit: u64, len: u64) -> bool {
    limit == libc::RLIM_INFINITY || limit >= len
}

/// Whether this process may give a file `len` bytes (`set_size`).
pub fn may_size(len: u64) -> bool {
    within(rlimit_fsize().1, len)
}

/// Whether this process may write a file up to `len` bytes as it stands (its soft
/// limit: past it a write raises SIGXFSZ).
pub fn may_write(len: u64) -> bool {
    within(rlimit_fsize().0, len)
}

/// Gives a memory file (memfd, registry) its size. RLIMIT_FSIZE limits files a
/// process writes, not the kernel's SysV segments, and past it ftruncate raises
/// SIGXFSZ, which kills a program by default: the soft limit is lifted to the hard
/// one for the call, and past the hard one nothing is tried (EFBIG, no signal).
pub fn set_size(fd: RawFd, len: u64) -> SysResult<()> {
    let (soft, hard) = rlimit_fsize();
    if within(soft, len) {
        return ftruncate(fd, len);
    }
    if !within(hard, len) || set_rlimit_fsize(hard, hard).is_err() {
        return Err(Errno(libc::EFBIG));
    }
    let r = ftruncate(fd, len);
    let _ = set_rlimit_fsize(soft, hard);
    r
}

/// Lifts the soft RLIMIT_FSIZE to the hard one and ignores SIGXFSZ, for the
/// server: it sizes memfds for processes whose own limit is lower, and a size past
/// its hard limit must fail the request, not end the server.
pub fn lift_fsize_for_server() {
    let (_, hard) = rlimit_fsize();
    let _ = set_rlimit_fsize(hard, hard);
    // SAFETY: SIG_IGN for SIGXFSZ installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

pub fn rlimit_memlock() -> u64 {
    // SAFETY: rl is a writable rlimit.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl);
        rl.rlim_cur
    }
}

pub fn now() -> i64 {
    // SAFETY: time(NULL) only returns a value (vDSO).
    unsafe { libc::time(std::ptr::null_mut()) }
}

/// Reads a whole small file (procfs, sysfs) as a string.
pub fn read_small(path: &str) -> Option<String> {
    // open and pread until the end: no stat, no extra read (procfs and sysfs
    // files report no size anyway).
    let fd = open(&cstr(std::path::Path::new(path)), libc::O_RDONLY, 0).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match retry(|| pread(fd.as_raw_fd(), &mut buf[len..], len as u64)).ok()? {
            0 => break,
            n => len += n,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// The shmdt system call itself (trap mode's load-time probe).
pub fn raw_shmdt(addr: usize) -> SysResult<i64> {
    // SAFETY: shmdt of an address that is never an attach (the caller passes an
    // unaligned one) unmaps nothing.
    check(unsafe { raw(libc::SYS_shmdt, &[addr]) })
}

/// shmctl straight to the kernel, bypassing libc and the shim's own `syscall`
/// hook (used once, to probe whether native SysV IPC works).
pub fn raw_shmctl(id: i32, cmd: i32, buf: usize) -> SysResult<i64> {
    // SAFETY: the shmctl system call with a buffer the caller owns (IPC_INFO
    // writes at most 72 bytes); no other state is touched.
    let r = unsafe { raw(libc::SYS_shmctl, &[id as usize, cmd as usize, buf]) };
    if r == -1 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Looks up the next definition of a libc function (the one the shim interposes).
pub fn next_symbol(name: &CStr) -> Option<usize> {
    // SAFETY: dlsym(RTLD_NEXT) only reads the loader's symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        Some(p as usize)
    }
}

// ----------------------------------------------------------- robust mutex

/// Initialises a process-shared robust mutex in place.
///
/// # Safety
/// `m` must point to writable memory for a `pthread_mutex_t` that no other thread
/// or process uses yet.
pub unsafe fn init_robust_mutex(m: *mut libc::pthread_mutex_t) {
    // SAFETY: attr is a local attribute object; m is as the caller guarantees.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(m, &attr);
        libc::pthread_mutexattr_destroy(&mut attr);
    }
}

/// pthread_mutex_lock; returns 0 or EOWNERDEAD.
///
/// # Safety
/// `m` must point to a mutex made by `init_robust_mutex`, mapped for the whole call.
pub unsafe fn robust_mutex_lock(m: *mut libc::pthread_mutex_t) -> i32 {
    // SAFETY: as the caller guarantees.
    unsafe { libc::pthread_mutex_lock(m) }
}

/// pthread_mutex_timedlock for at most `wait`; returns 0, EOWNERDEAD or ETIMEDOUT.
///
/// # Safety
/// As for `robust_mutex_lock`.
pub unsafe fn robust_mutex_timedlock(m: *mut libc::pthread_mutex_t, wait: std::time::Duration) -> i32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let ns = ts.tv_nsec as u64 + wait.subsec_nanos() as u64;
    ts.tv_sec += wait.as_secs() as libc::time_t + (ns / 1_000_000_000) as libc::time_t;
    ts.tv_nsec = (ns % 1_000_000_000) as libc::c_long;
    // SAFETY: as the caller guarantees; ts is a valid absolute time.
    unsafe { libc::pthread_mutex_timedlock(m, &ts) }
}

/// pthread_mutex_trylock; returns 0, EOWNERDEAD or EBUSY.
///
/// # Safety
/// As for `robust_mutex_lock`.
pub unsafe fn robust_mutex_trylock(m: *mut libc::pthread_mutex_t) -> i32 {
    // SAFETY: as the caller guarantees.
    unsafe { libc::pthread_mutex_trylock(m) }
}

/// # Safety
/// As for `robust_mutex_lock`, and the calling thread must hold the mutex.
pub unsafe fn robust_mutex_unlock(m: *mut libc::pthread_mutex_t) {
    // SAFETY: as the caller guarantees.
    unsafe { libc::pthread_mutex_unlock(m) };
}

/// # Safety
/// As for `robust_mutex_unlock`, after EOWNERDEAD and repair.
pub unsafe fn robust_mutex_consistent(m: *mut libc::pthread_mutex_t) {
    // SAFETY: as the caller guarantees.
    unsafe { libc::pthread_mutex_consistent(m) };
}

// ----------------------------------------------------------- misc

/// A path as a C string (a path with a NUL byte becomes the empty string, which no
/// call accepts).
pub fn cstr(p: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Whether `fd` becomes readable (or hung up) within `ms` milliseconds.
pub fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = retry(|| check(unsafe { libc::poll(&mut p, 1, ms) } as libc::c_long));
    matches!(r, Ok(n) if n > 0)
}

/// Whether the peer of a socket has closed its end (or the socket failed).
pub fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = retry(|| check(unsafe { libc::poll(&mut p, 1, 0) } as libc::c_long));
    matches!(r, Ok(n) if n > 0) && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// (soft, hard) RLIMIT_NOFILE.
pub fn rlimit_nofile() -> (u64, u64) {
    // SAFETY: rl is a writable rlimit.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        (rl.rlim_cur, rl.rlim_max)
    }
}

pub fn set_rlimit_nofile(soft: u64, hard: u64) -> SysResult<()> {
    let rl = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: rl is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } as libc::c_long).map(|_| ())
}

/// The file of the loaded object (library or executable) containing `addr`.
pub fn object_path(addr: usize) -> Option<std::path::PathBuf> {
    // SAFETY: dladdr only reads the loader's tables; dli_fname is a NUL-terminated
    // string owned by the loader.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            Some(std::path::PathBuf::from(CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()))
        } else {
            None
        }
    }
}

/// Runs `bin` with `args` and an empty environment and waits for it to exit (the
/// server's launcher, which forks the daemon and exits at once).
pub fn spawn_and_wait(bin: &std::path::Path, args: &[&str]) -> SysResult<()> {
    let cbin = cstr(bin);
    let cargs: Vec<std::ffi::CString> = args.iter().map(|a| std::ffi::CString::new(*a).unwrap_or_default()).collect();
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv/envp are NULL-terminated arrays of NUL-terminated strings that
    // outlive the call; posix_spawn runs no atfork handlers.
    let r = unsafe {
        libc::posix_spawn(&mut pid, cbin.as_ptr(), std::ptr::null(), std::ptr::null(), argv.as_ptr() as *const *mut _, envp.as_ptr() as *const *mut _)
    };
    if r != 0 {
        return Err(Errno(r));
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just started.
    retry(|| check(unsafe { raw(libc::SYS_wait4, &[pid as usize, &mut status as *mut i32 as usize, 0, 0]) })).map(|_| ())
}

/// Takes an exclusive flock without waiting; false if someone else holds it.
pub fn flock_exclusive(fd: RawFd) -> bool {
    // SAFETY: flock on a descriptor; no memory is passed.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Detaches from the caller (fork, setsid) and closes every inherited descriptor
/// except `keep`; stdio goes to /dev/null.
pub fn daemonize(keep: &[RawFd]) {
    // SAFETY: called single-threaded right after exec (server start-up): fork is
    // safe, and every descriptor closed is one we inherited and do not use.
    unsafe {
        let pid = libc::fork();
        if pid != 0 {
            libc::_exit(if pid > 0 { 0 } else { 1 });
        }
        libc::setsid();
        let mut next = 0u32;
        let mut keep: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        keep.sort_unstable();
        for k in keep {
            if k > next {
                raw(libc::SYS_close_range, &[next as usize, (k - 1) as usize, 0]);
            }
            next = k + 1;
        }
        raw(libc::SYS_close_range, &[next as usize, u32::MAX as usize, 0]);
        let null = raw(libc::SYS_openat, &[libc::AT_FDCWD as usize, c"/dev/null".as_ptr() as usize, libc::O_RDWR as usize]) as i32;
        if null >= 0 {
            for std in 0..3 {
                if libc::fcntl(std, libc::F_GETFD) < 0 {
                    libc::dup2(null, std);
                }
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::umask(0o077);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

extern "C" fn park_forever(_: libc::c_int) {
    loop {
        // SAFETY: pause is async-signal-safe and takes no arguments.
        unsafe { libc::pause() };
    }
}

/// Makes SIGBUS (a mapped file truncated under us) park the faulting thread for
/// good instead of killing the process: the server's exit would make the kernel
/// write "owner died" into its liveness mutex, inside a registry it must leave
/// untouched once it is not what it was.
pub fn park_on_sigbus() {
    // SAFETY: an all-zero sigaction is valid; the handler only calls pause().
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = park_forever as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// A seccomp filter over the System V shared memory system calls: x86_64's
/// `shmget`/`shmat`/`shmctl`/`shmdt` get `native`; their x32 twins, i386's, and
/// the shm sub-calls of i386's `ipc` multiplexer get `compat`; everything else,
/// and every other architecture, is allowed.
fn sysv_shm_filter(native: u32, compat: u32) -> [libc::sock_filter; 30] {
    use libc::sock_filter;
    const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    const NR: u32 = 0;
    const ARG0: u32 = 16;
    const X86_64: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    const I386: u32 = 0x4000_0003; // AUDIT_ARCH_I386
    let st = |code: u16, k: u32| sock_filter { code, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| sock_filter { code: JEQ, jt, jf, k };
    let allow = libc::SECCOMP_RET_ALLOW;
    // Jumps are relative to the next instruction.
    [
        /* 0 */ st(LD, ARCH),
        /* 1 */ jeq(X86_64, 0, 13), // else 15
        /* 2 */ st(LD, NR),
        /* 3 */ jeq(29, 9, 0), // shmget: 13
        /* 4 */ jeq(30, 8, 0), // shmat
        /* 5 */ jeq(31, 7, 0), // shmctl
        /* 6 */ jeq(67, 6, 0), // shmdt
        /* 7 */ st(AND, !0x4000_0000u32), // the x32 bit
        /* 8 */ jeq(29, 5, 0), // 14
        /* 9 */ jeq(30, 4, 0),
        /* 10 */ jeq(31, 3, 0),
        /* 11 */ jeq(67, 2, 0),
        /* 12 */ st(RET, allow),
        /* 13 */ st(RET, native),
        /* 14 */ st(RET, compat),
        /* 15 */ jeq(I386, 0, 13), // else 29
        /* 16 */ st(LD, NR),
        /* 17 */ jeq(395, 10, 0), // shmget: 28
        /* 18 */ jeq(396, 9, 0), // shmctl
        /* 19 */ jeq(397, 8, 0), // shmat
        /* 20 */ jeq(398, 7, 0), // shmdt
        /* 21 */ jeq(117, 0, 7), // ipc, else 29
        /* 22 */ st(LD, ARG0),
        /* 23 */ st(AND, 0xffff),
        /* 24 */ jeq(21, 3, 0), // SHMAT: 28
        /* 25 */ jeq(22, 2, 0), // SHMDT
        /* 26 */ jeq(23, 1, 0), // SHMGET
        /* 27 */ jeq(24, 0, 1), // SHMCTL, else 29
        /* 28 */ st(RET, compat),
        /* 29 */ st(RET, allow),
    ]
}

/// Installs `filter` for this thread and its descendants. Tries without
/// no_new_privs first (allowed with CAP_SYS_ADMIN), then sets it, as an
/// unprivileged filter requires, if `may_set_nnp`.
fn install_filter(filter: &[libc::sock_filter], may_set_nnp: bool, all_threads: bool) -> SysResult<()> {
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    let flags = if all_threads { libc::SECCOMP_FILTER_FLAG_TSYNC } else { 0 };
    let install = || {
        // SAFETY: prog points at a filter that lives across the call; the kernel
        // copies it.
        check(unsafe { raw(libc::SYS_seccomp, &[libc::SECCOMP_SET_MODE_FILTER as usize, flags as usize, &prog as *const libc::sock_fprog as usize]) })
    };
    match install() {
        Ok(_) => Ok(()),
        Err(Errno(libc::EACCES)) if may_set_nnp => {
            // SAFETY: prctl with integer arguments only.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
            install().map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Installs a seccomp filter under which the System V shared memory system calls
/// fail with `errno`, inherited by every descendant; sets no_new_privs first, as
/// an unprivileged filter requires.
pub fn deny_sysv_shm(errno: i32) -> SysResult<()> {
    let deny = libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA);
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
    install_filter(&sysv_shm_filter(deny, deny), false, false)
}

/// Installs, for every thread of this process and its descendants, a seccomp
/// filter that traps x86_64's SysV shm system calls (SIGSYS, si_code SYS_SECCOMP)
/// and fails the other ABIs' with ENOSYS. Sets no_new_privs only where the
/// process lacks the privilege to install a filter without it.
pub fn trap_sysv_shm() -> SysResult<()> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    install_filter(&sysv_shm_filter(libc::SECCOMP_RET_TRAP, enosys), true, true)
}

/// Makes `cmd`'s child install `deny_sysv_shm(errno)` before it execs.
pub fn deny_sysv_shm_in(cmd: &mut std::process::Command, errno: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec; deny_sysv_shm
    // only builds a filter on the stack and calls prctl and seccomp(2), all
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || deny_sysv_shm(errno).map_err(|e| std::io::Error::from_raw_os_error(e.0)));
    }
}

/// unshare(CLONE_NEWIPC): this process (and the children it starts next) gets a
/// fresh System V IPC namespace.
pub fn new_ipc_namespace() -> SysResult<()> {
    // SAFETY: unshare takes a flag word only.
    check(unsafe { libc::unshare(libc::CLONE_NEWIPC) } as libc::c_long).map(|_| ())
}

/// The path this process was executed as (AT_EXECFN; no system call).
pub fn exec_name() -> Option<String> {
    // SAFETY: getauxval reads the auxiliary vector; AT_EXECFN, when present, points
    // at a NUL-terminated string the kernel placed on the initial stack, which
    // lives as long as the process.
    let p = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if p.is_null() {
        return None;
    }
    // SAFETY: as above: a valid NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// sched_yield(2).
pub fn yield_cpu() {
    // SAFETY: no arguments.
    unsafe { libc::sched_yield() };
}

/// PR_SET_DUMPABLE: a non-dumpable process's /proc/PID/fd is closed to its own uid.
pub fn set_dumpable(on: bool) {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0, 0, 0) };
}

/// Whether a signal handler may be installed in this process. The preload
/// library sets it when the program installs one through libc (its `sigaction`
/// and `signal`-family hooks: `signal`, `sigset`, `bsd_signal`, `sysv_signal`), or at once when those calls do not reach its hooks (it
/// was not preloaded); it is never cleared. A process started by exec has none.
pub static HANDLERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Blocks every signal on this thread until dropped: a handler cannot run in the
/// middle of shim code that allocates (it would deadlock on the allocator's lock
/// if it made a SysV call itself) or holds a lock (a handler that longjmps out
/// would leave it held); pending signals arrive when the guard goes. Without a
/// handler (`HANDLERS`) no signal can run code here, and nothing is blocked. (A
/// stop signal with its default action stops the process either way, as SIGSTOP
/// always could.)
pub struct SigBlock(Option<libc::sigset_t>);

pub fn block_signals() -> SigBlock {
    if !HANDLERS.load(std::sync::atomic::Ordering::Acquire) {
        return SigBlock(None);
    }
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask write only into
    // the sets we pass.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        SigBlock(Some(old))
    }
}

impl Drop for SigBlock {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the mask saved by block_signals.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
        }
    }
}

/// Moves a descriptor to a high number, away from the low numbers programs manage
/// themselves (closing "all" fds from 3 up, dup2 onto 0–2).
pub fn high_fd(fd: OwnedFd) -> OwnedFd {
    dup_at_least(fd.as_raw_fd(), 200).unwrap_or(fd)
}

/// A private futex operation (FUTEX_WAIT or FUTEX_WAKE, no timeout) on a live
/// atomic of this process.
pub fn futex_private(addr: &std::sync::atomic::AtomicU32, op: i32, val: u32) {
    // SAFETY: a futex wait/wake on a live AtomicU32 (borrowed for the call); no
    // timeout, no other memory.
    unsafe { raw(libc::SYS_futex, &[addr.as_ptr() as usize, (op | libc::FUTEX_PRIVATE_FLAG) as usize, val as usize, 0]) };
}

/// mprotect(2) by raw syscall, for the code pages a hook rewrites.
///
/// # Safety
/// Code or data in the range must not be in use in a way the new protection
/// breaks (the caller restores it).
pub unsafe fn protect_text(addr: usize, len: usize, prot: i32) -> SysResult<()> {
    // SAFETY: as the caller guarantees.
    check(unsafe { raw(libc::SYS_mprotect, &[addr, len, prot as usize]) }).map(|_| ())
}

/// pread(2) into `buf`: the bytes read.
pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> SysResult<usize> {
    // SAFETY: buf is valid writable memory of its length.
    check(unsafe { raw(libc::SYS_pread64, &[fd as usize, buf.as_mut_ptr() as usize, buf.len(), off as usize]) }).map(|n| n as usize)
}

/// fcntl(F_SETLEASE): takes (F_RDLCK, F_WRLCK) or drops (F_UNLCK) a lease.
pub fn set_lease(fd: RawFd, kind: i32) -> SysResult<()> {
    // SAFETY: fcntl with integer arguments only.
    check(unsafe { raw(libc::SYS_fcntl, &[fd as usize, libc::F_SETLEASE as usize, kind as usize]) }).map(|_| ())
}
