//! `SHMSHIM_TRACE=FILE`: a record of every SysV call the program makes, in either
//! mode (the kernel's or shmshim's), for `shmshim compare`. One line per call,
//! appended with one write (so lines of several processes never mix):
//!
//! ```text
//! PID<TAB>shmget key:0x1 size=4096 flg=0o1600 -> id:32768
//! PID<TAB>shmat id:32768 addr:0 flg=0o0 -> addr:0x7f...
//! PID<TAB>shmctl id:32768 cmd=2 -> 0 ds={key=key:0x1 uid=0 ... cpid=pid:123 nattch=1}
//! PID<TAB>shmdt addr:0x7f... -> -1 EINVAL
//! ```
//!
//! Values that differ between runs for reasons other than semantics carry a type
//! (`id:`, `key:`, `addr:`, `pid:`, `time:`) so a reader can number them by
//! first appearance (programs such as `ipcmk` pick random keys); everything else
//! is printed as the call saw it.

use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

static SINK: OnceLock<Option<OwnedFd>> = OnceLock::new();

fn sink() -> Option<&'static OwnedFd> {
    SINK.get_or_init(|| {
        let path = crate::config::get().trace.as_deref()?;
        let p = std::ffi::CString::new(path).ok()?;
        sys::open(&p, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o644).ok().map(crate::sys::high_fd)
    })
    .as_ref()
}

/// Whether calls are traced (one load once the sink is open).
pub fn enabled() -> bool {
    sink().is_some()
}

fn write(line: &str) {
    if let Some(fd) = sink() {
        let saved = sys::errno();
        let line = format!("{}\t{line}\n", sys::getpid());
        // A short or failed write only loses a trace line.
        let _ = sys::write_all(fd.as_raw_fd(), line.as_bytes());
        sys::set_errno(saved);
    }
}

fn result(r: i64, errno: i32, kind: &str) -> String {
    if r == -1 {
        format!("-1 {}", sys::errno_name(errno))
    } else if kind.is_empty() {
        r.to_string()
    } else {
        format!("{kind}:{r}")
    }
}

pub fn shmget(key: i32, size: usize, flg: i32, r: i32, errno: i32) {
    write(&format!("shmget key:{key:#x} size={size} flg={flg:#o} -> {}", result(r as i64, errno, "id")));
}

pub fn shmat(id: i32, addr: usize, flg: i32, r: usize, errno: i32) {
    let res = if r == usize::MAX { format!("-1 {}", sys::errno_name(errno)) } else { format!("addr:{r:#x}") };
    write(&format!("shmat id:{id} addr:{addr:#x} flg={flg:#o} -> {res}"));
}

pub fn shmdt(addr: usize, r: i32, errno: i32) {
    write(&format!("shmdt addr:{addr:#x} -> {}", result(r as i64, errno, "")));
}

/// shmctl, with the structure it filled (read back from the caller's buffer).
pub fn shmctl(id: i32, cmd: i32, buf: usize, r: i32, errno: i32) {
    const IPC_STAT: i32 = libc::IPC_STAT;
    const SHM_STAT: i32 = 13;
    const SHM_STAT_ANY: i32 = 15;
    const IPC_INFO: i32 = libc::IPC_INFO;
    const SHM_INFO: i32 = 14;
    // SHM_STAT and SHM_STAT_ANY take an index and return an id.
    let (arg, kind) = if matches!(cmd, SHM_STAT | SHM_STAT_ANY) { (format!("idx:{id}"), "id") } else { (format!("id:{id}"), "") };
    let mut line = format!("shmctl {arg} cmd={cmd} -> {}", result(r as i64, errno, kind));
    let mut b = [0u8; 112];
    if r != -1 && buf != 0 && sys::copy_from_user(&mut b, buf).is_ok() {
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        match cmd {
            IPC_STAT | SHM_STAT | SHM_STAT_ANY => {
                use std::mem::offset_of;
                let perm = offset_of!(libc::shmid_ds, shm_perm);
                let t = |v: i64| format!("time:{v}");
                line += &format!(
                    " ds={{key=key:{:#x} uid={} gid={} cuid={} cgid={} mode={:#o} segsz={} atime={} dtime={} ctime={} cpid=pid:{} lpid=pid:{} nattch={}}}",
                    u32_at(perm + offset_of!(libc::ipc_perm, __key)),
                    u32_at(perm + offset_of!(libc::ipc_perm, uid)),
                    u32_at(perm + offset_of!(libc::ipc_perm, gid)),
                    u32_at(perm + offset_of!(libc::ipc_perm, cuid)),
                    u32_at(perm + offset_of!(libc::ipc_perm, cgid)),
                    u32_at(perm + offset_of!(libc::ipc_perm, mode)) & 0xffff,
                    u64_at(offset_of!(libc::shmid_ds, shm_segsz)),
                    t(i64_at(offset_of!(libc::shmid_ds, shm_atime))),
                    t(i64_at(offset_of!(libc::shmid_ds, shm_dtime))),
                    t(i64_at(offset_of!(libc::shmid_ds, shm_ctime))),
                    u32_at(offset_of!(libc::shmid_ds, shm_cpid)) as i32,
                    u32_at(offset_of!(libc::shmid_ds, shm_lpid)) as i32,
                    u64_at(offset_of!(libc::shmid_ds, shm_nattch)),
                );
            }
            IPC_INFO => {
                line += &format!(" info={{shmmax={} shmmin={} shmmni={} shmseg={} shmall={}}}", u64_at(0), u64_at(8), u64_at(16), u64_at(24), u64_at(32));
            }
            SHM_INFO => {
                line += &format!(" info={{used_ids={} shm_tot={} shm_rss={} shm_swp={}}}", u32_at(0) as i32, u64_at(8), u64_at(16), u64_at(24));
            }
            _ => {}
        }
    }
    write(&line);
}
