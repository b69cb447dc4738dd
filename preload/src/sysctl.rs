//! `/proc/sys/kernel/shm{max,all,mni,_rmid_forced,_next_id}` as the shim's
//! namespace has them.
//!
//! Opening one for reading gives a descriptor on its current text. Opening one for
//! writing (by a process the file's mode admits) gives a descriptor on an
//! anonymous file in the namespace directory, and every write reaches the
//! namespace:
//! - `write(2)` on that descriptor is parsed and applied at once, with the
//!   kernel's EINVAL for a value it refuses;
//! - writes that bypass the `write` symbol (stdio's, which libc makes
//!   internally; those through a `dup`ed descriptor, as a shell's `echo >` does)
//!   land in the file, and are applied at `fclose`, which then reports EINVAL as
//!   the kernel's failed flush would, or at the process's next SysV call, exec,
//!   wait for a child, or exit, whichever comes first.
//!
//! A pending file is tracked until no descriptor of the program writes it any
//! more: a write lease on the library's own handle succeeds only then.

use libc::{c_char, c_int};
use shmshim_core::fsmutex::FsMutex;
use shmshim_core::lifecycle::Sysctl;
use shmshim_core::shm;
use shmshim_core::sys::{self, Errno, SysResult};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

const PREFIX: &[u8] = b"/proc/sys/kernel/";

/// The sysctl a path names, if the shim serves it.
pub fn which(path: *const c_char) -> Option<Sysctl> {
    if path.is_null() {
        return None;
    }
    // SAFETY: the caller passed a NUL-terminated path (as open(2) requires); we
    // read at most up to its NUL.
    let b = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    Sysctl::from_name(b.strip_prefix(PREFIX)?)
}

/// One descriptor opened for writing.
struct Pending {
    which: Sysctl,
    /// The file's identity (device, inode): the program may write it through
    /// any descriptor number (a shell's `echo >` dups it onto 1).
    ino: (u64, u64),
    /// The library's own read-write handle on the file (a separate open file
    /// description), to read what bypassed `write`, consume it, and tell by a
    /// lease when the program's descriptions are gone.
    handle: OwnedFd,
}

static PENDING: FsMutex<Vec<Pending>> = FsMutex::new(Vec::new());
/// PENDING's length, read without the lock on every hooked `write`.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Whether any descriptor of this process may be writing a sysctl.
pub fn any() -> bool {
    COUNT.load(Ordering::Acquire) != 0
}

/// open(2) of a sysctl: the descriptor, or the kernel's errno.
pub fn open(which: Sysctl, flags: c_int) -> SysResult<RawFd> {
    // Writes made past the hooks are read back like the kernel's.
    settle();
    let acc = flags & libc::O_ACCMODE;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    if acc == libc::O_RDONLY {
        let text = shm::sysctl_read(which)?;
        let fd = sys::memfd_create(c"sysctl", if cloexec { libc::MFD_CLOEXEC } else { 0 })?;
        sys::pwrite_all(fd.as_raw_fd(), text.as_bytes(), 0)?;
        return Ok(fd.into_raw_fd());
    }
    if !shm::sysctl_may_write(which) {
        return Err(Errno(libc::EACCES)); // the file's mode (S134)
    }
    let dir = std::ffi::CString::new(shmshim_core::config::get().dir.as_os_str().as_encoded_bytes()).map_err(|_| Errno(libc::ENOENT))?;
    // The namespace directory exists once the namespace is open.
    shm::sysctl_read(which)?;
    let file = sys::open(&dir, libc::O_TMPFILE | libc::O_RDWR | if cloexec { libc::O_CLOEXEC } else { 0 }, 0o600)?;
    let st = sys::fstat(file.as_raw_fd())?;
    let ino = (st.st_dev, st.st_ino);
    let me = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|_| Errno(libc::EINVAL))?;
    let handle = sys::high_fd(sys::open(&me, libc::O_RDWR | libc::O_CLOEXEC, 0)?);
    let fd = file.into_raw_fd();
    let mut p = PENDING.lock();
    p.push(Pending { which, ino, handle });
    COUNT.store(p.len(), Ordering::Release);
    Ok(fd)
}

/// A hooked write(2): `Some(result)` if `fd` writes a sysctl (applied now),
/// whatever number the program moved the descriptor to (a shell's `echo >`
/// writes through a dup on descriptor 1).
pub fn write(fd: RawFd, buf: *const u8, n: usize) -> Option<SysResult<usize>> {
    let ino = pending(fd)?;
    let which = {
        let p = PENDING.lock();
        p.iter().find(|e| e.ino == ino)?.which
    };
    let mut bytes = vec![0u8; n.min(4096)];
    Some(sys::copy_from_user(&mut bytes, buf as usize).map_err(|_| Errno(libc::EFAULT)).and_then(|()| shm::sysctl_write(which, &bytes)).map(|()| n))
}

/// Applies what reached entry `e`'s file past `write`, and empties the file.
fn apply(e: &Pending) -> SysResult<()> {
    let mut buf = [0u8; 256];
    let n = sys::pread(e.handle.as_raw_fd(), &mut buf, 0)?;
    if n == 0 {
        return Ok(());
    }
    let _ = sys::ftruncate(e.handle.as_raw_fd(), 0);
    let text = &buf[..n];
    if text.iter().all(|b| *b == 0) {
        return Ok(());
    }
    shm::sysctl_write(e.which, text)
}

/// Whether no descriptor of the program writes entry `e`'s file any more.
fn abandoned(e: &Pending) -> bool {
    if sys::set_lease(e.handle.as_raw_fd(), libc::F_WRLCK).is_ok() {
        let _ = sys::set_lease(e.handle.as_raw_fd(), libc::F_UNLCK);
        return true;
    }
    false
}

/// Applies every pending write and forgets files nobody writes any more.
pub fn settle() {
    if !any() {
        return;
    }
    let mut p = PENDING.lock();
    p.retain(|e| {
        let _ = apply(e);
        !abandoned(e)
    });
    COUNT.store(p.len(), Ordering::Release);
}

/// The identity of the pending file `fd` writes, if it writes one.
pub fn pending(fd: RawFd) -> Option<(u64, u64)> {
    if !any() {
        return None;
    }
    let st = sys::fstat(fd).ok()?;
    let ino = (st.st_dev, st.st_ino);
    let p = PENDING.lock();
    p.iter().any(|e| e.ino == ino).then_some(ino)
}

/// After libc flushed a stream on the pending file `ino` (fflush, or fclose:
/// `closed`): the written value, applied; Err(EINVAL) if the kernel would have
/// refused it. A closed stream's file is forgotten once nobody writes it.
pub fn flushed(ino: (u64, u64), closed: bool) -> SysResult<()> {
    let mut p = PENDING.lock();
    let Some(i) = p.iter().position(|e| e.ino == ino) else { return Ok(()) };
    let r = apply(&p[i]);
    if closed && abandoned(&p[i]) {
        p.remove(i);
        COUNT.store(p.len(), Ordering::Release);
    }
    r
}
