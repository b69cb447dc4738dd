//! Credentials of the process a SysV operation acts for, and the kernel's
//! permission rule `ipcperms` (SEMANTICS S112–S117).
//!
//! A call made in the calling process uses [`Creds::current`]. The server decides a
//! shared namespace's changes on [`Creds::of_peer`]: the pid, uid and gid the kernel
//! attached to the request (`SCM_CREDENTIALS`), then the groups, fsgid, capabilities
//! and `RLIMIT_MEMLOCK` from `/proc/PID`, read by path between opening a pidfd and
//! checking through it that the process is still alive, so a pid reused meanwhile is never believed.

use crate::registry::Slot;
use crate::sys::{self, Errno, SysResult};

pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_IPC_OWNER: u32 = 15;
pub const CAP_SYS_RAWIO: u32 = 17;
pub const CAP_SYS_ADMIN: u32 = 21;

/// Whose credentials: this process (read lazily), or a peer's (read at once).
enum Source {
    Current,
    Peer,
}

pub struct Creds {
    pid: Option<i32>,
    pub euid: u32,
    pub egid: u32,
    /// Real uid (charged for SHM_LOCK, S108).
    uid: Option<u32>,
    fsgid: Option<u32>,
    caps: Option<u64>,
    groups: Option<Vec<u32>>,
    memlock: Option<u64>,
    source: Source,
}

impl Creds {
    pub fn current() -> Creds {
        let (euid, egid) = sys::eids();
        Creds { pid: None, euid, egid, uid: None, fsgid: None, caps: None, groups: None, memlock: None, source: Source::Current }
    }

    /// The credentials of process `pid` (as reported by the kernel for a request),
    /// whose effective ids the kernel gave as `euid`/`egid`.
    pub fn of_peer(pid: i32, euid: u32, egid: u32) -> SysResult<Creds> {
        let pidfd = sys::pidfd_open(pid).map_err(|_| Errno(libc::ESRCH))?;
        let status = sys::read_small(&format!("/proc/{pid}/status")).ok_or(Errno(libc::ESRCH))?;
        let limits = sys::read_small(&format!("/proc/{pid}/limits")).unwrap_or_default();
        if !sys::pidfd_alive(std::os::fd::AsRawFd::as_raw_fd(&pidfd)) {
            return Err(Errno(libc::ESRCH));
        }
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
        let uids = field("Uid:");
        let gids = field("Gid:");
        let num = |v: &[&str], i: usize| v.get(i).and_then(|s| s.parse::<u32>().ok());
        let caps = field("CapEff:").first().and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0);
        let groups = field("Groups:").iter().filter_map(|s| s.parse().ok()).collect();
        let memlock = limits
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .and_then(|l| l.split_whitespace().nth(3))
            .map(|v| if v == "unlimited" { libc::RLIM_INFINITY } else { v.parse().unwrap_or(0) })
            .unwrap_or(0);
        Ok(Creds {
            pid: Some(pid),
            euid: num(&uids, 1).unwrap_or(euid),
            egid: num(&gids, 1).unwrap_or(egid),
            uid: num(&uids, 0),
            fsgid: num(&gids, 3),
            caps: Some(caps),
            groups: Some(groups),
            memlock: Some(memlock),
            source: Source::Peer,
        })
    }

    /// The acting process's pid (S23: shm_cpid).
    pub fn pid(&mut self) -> i32 {
        *self.pid.get_or_insert_with(sys::getpid)
    }

    /// The caller's pid when it is known already (saves a getpid).
    pub fn set_pid(&mut self, pid: i32) {
        self.pid = Some(pid);
    }

    pub fn capable(&mut self, cap: u32) -> bool {
        let caps = *self.caps.get_or_insert_with(sys::effective_caps);
        caps & (1u64 << cap) != 0
    }

    /// The real uid.
    pub fn uid(&mut self) -> u32 {
        *self.uid.get_or_insert_with(sys::getuid)
    }

    /// RLIMIT_MEMLOCK's soft value.
    pub fn memlock(&mut self) -> u64 {
        *self.memlock.get_or_insert_with(sys::rlimit_memlock)
    }

    /// in_group_p: the fsgid or any supplementary group.
    pub fn in_group(&mut self, gid: u32) -> bool {
        let fsgid = match self.source {
            Source::Current => *self.fsgid.get_or_insert_with(sys::getfsgid),
            Source::Peer => self.fsgid.unwrap_or(self.egid),
        };
        if fsgid == gid {
            return true;
        }
        self.groups.get_or_insert_with(sys::getgroups).contains(&gid)
    }

    pub fn is_owner(&self, s: &Slot) -> bool {
        self.euid == s.uid.get() || self.euid == s.cuid.get()
    }

    /// ipcperms (S112–S117): one class is chosen, its three bits decide, and
    /// CAP_IPC_OWNER overrides. `flag` is a mode mask such as 0444 or shmflg.
    pub fn ipcperms(&mut self, s: &Slot, flag: i32) -> bool {
        let flag = flag as i16 as i32; // the kernel takes a `short`
        let requested = (flag >> 6) | (flag >> 3) | flag;
        let mut granted = s.mode.get() as i32;
        if self.is_owner(s) {
            granted >>= 6;
        } else if self.in_group(s.cgid.get()) || self.in_group(s.gid.get()) {
            granted >>= 3;
        }
        requested & !granted & 0o7 == 0 || self.capable(CAP_IPC_OWNER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(euid: u32, egid: u32, groups: Vec<u32>, caps: u64) -> Creds {
        Creds { pid: Some(1), euid, egid, uid: Some(euid), fsgid: Some(egid), caps: Some(caps), groups: Some(groups), memlock: Some(0), source: Source::Peer }
    }

    fn slot(uid: u32, gid: u32, mode: u32) -> Slot {
        let s = Slot::default();
        s.uid.set(uid);
        s.cuid.set(uid);
        s.gid.set(gid);
        s.cgid.set(gid);
        s.mode.set(mode);
        s
    }

    #[test]
    fn s112_one_class_decides() {
        // The owner class denies even though "other" would grant.
        let s = slot(1000, 1000, 0o047);
        assert!(!peer(1000, 1000, vec![], 0).ipcperms(&s, 0o444));
        // Group member: group bits (4 = read) decide.
        assert!(peer(2000, 5, vec![1000], 0).ipcperms(&s, 0o444));
        assert!(!peer(2000, 5, vec![1000], 0).ipcperms(&s, 0o222));
        // Others: 7.
        assert!(peer(3000, 3000, vec![], 0).ipcperms(&s, 0o666));
    }

    #[test]
    fn s117_cap_ipc_owner_overrides() {
        let s = slot(1000, 1000, 0o600);
        assert!(!peer(3000, 3000, vec![], 0).ipcperms(&s, 0o444));
        assert!(peer(3000, 3000, vec![], 1 << CAP_IPC_OWNER).ipcperms(&s, 0o666));
    }

    #[test]
    fn s36_flag_is_a_short() {
        // Bits above 16 of shmflg (e.g. a huge page size code) never count.
        let s = slot(1000, 1000, 0o600);
        assert!(peer(1000, 1000, vec![], 0).ipcperms(&s, 0o600 | (21 << 26)));
    }

    #[test]
    fn a_peer_is_read_from_proc() {
        let me = sys::getpid();
        let c = Creds::of_peer(me, sys::geteuid(), sys::getegid()).unwrap();
        assert_eq!(c.euid, sys::geteuid());
        assert!(Creds::of_peer(i32::MAX, 0, 0).is_err());
    }
}
