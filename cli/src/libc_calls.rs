//! The C library calls the `shmshim` command makes itself, as safe functions.
//!
//! The demo uses libc's `shmget`/`shmat`/`shmdt`/`shmctl`, which the preloaded
//! library replaces exactly as it does a C program's (this binary has no hooks of
//! its own), so the demo exercises the same path as any program.

use std::io::{Error, Result};

/// shmget(2).
pub fn shmget(key: i32, size: usize, flg: i32) -> Result<i32> {
    // SAFETY: shmget takes no pointer; a bad argument only makes it fail.
    let id = unsafe { libc::shmget(key, size, flg) };
    if id < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(id)
    }
}

/// shmctl(id, IPC_RMID, NULL).
pub fn rmid(id: i32) -> Result<()> {
    // SAFETY: IPC_RMID reads no buffer.
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(Error::last_os_error())
    }
}

/// An attach at an address the kernel (or the shim) chose; detached on drop.
/// The memory is shared with other processes, so it is only ever copied to and
/// from, never referenced.
pub struct Attach {
    p: *mut u8,
    len: usize,
}

impl Attach {
    /// shmat(id, NULL, flg) of a segment at least `len` bytes long.
    pub fn new(id: i32, flg: i32, len: usize) -> Result<Attach> {
        // SAFETY: a new attach at an address the call chooses replaces nothing.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flg) };
        if p as isize == -1 {
            Err(Error::last_os_error())
        } else {
            Ok(Attach { p: p as *mut u8, len })
        }
    }

    /// Copies `bytes` to the start of the segment (at most its length).
    pub fn write(&self, bytes: &[u8]) {
        let n = bytes.len().min(self.len);
        // SAFETY: p maps at least len writable bytes (a read-write attach is the
        // caller's to write); a raw copy forms no reference to shared memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.p, n) };
    }

    /// The bytes from the start of the segment up to the first NUL (or its end).
    pub fn read_cstr(&self) -> String {
        let mut out = Vec::new();
        for i in 0..self.len {
            // SAFETY: i < len, inside the mapping; read by value, volatile since
            // another process may write it.
            let b = unsafe { self.p.add(i).read_volatile() };
            if b == 0 {
                break;
            }
            out.push(b);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        // SAFETY: p is this attach's address; nothing refers into it once it drops.
        unsafe { libc::shmdt(self.p as *const libc::c_void) };
    }
}

/// The user name of `uid`, or the number.
pub fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns NULL or a pointer to a static record, read at once
    // below before any other call could reuse it.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return uid.to_string();
    }
    // SAFETY: pw is a valid passwd record whose pw_name is a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }.to_string_lossy().into_owned()
}
