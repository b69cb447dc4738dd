//! The four SysV calls, one function per lifecycle step as in Linux `ipc/shm.c`:
//! [`newseg`], [`shmget`], [`do_shmat`], [`shm_close_frags`], [`shm_destroy`],
//! [`shmdt`], [`shmctl`]. Every error names the SEMANTICS item it implements.
//!
//! Nothing here is unsafe: raw calls live in `sys`, the shared layout in `registry`.

use crate::keeper;
use crate::process::{self, Attach, Frag, Local, LOCAL, PAGE};
use crate::registry::{self, id_idx, make_id, RegGuard, Registry, Slot, F_HUGETLB, F_NORESERVE, MAX_SLOTS, SHM_DEST, SHM_LOCKED, SLOT_FREE, SLOT_USED};
use crate::sys::{self, Errno, SysResult};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

pub const IPC_CREAT: i32 = 0o1000;
pub const IPC_EXCL: i32 = 0o2000;
pub const IPC_RMID: i32 = 0;
pub const IPC_SET: i32 = 1;
pub const IPC_STAT: i32 = 2;
pub const IPC_INFO: i32 = 3;
pub const SHM_LOCK: i32 = 11;
pub const SHM_UNLOCK: i32 = 12;
pub const SHM_STAT: i32 = 13;
pub const SHM_INFO: i32 = 14;
pub const SHM_STAT_ANY: i32 = 15;
pub const SHM_HUGETLB: i32 = 0o4000;
pub const SHM_NORESERVE: i32 = 0o10000;
pub const SHM_RDONLY: i32 = 0o10000;
pub const SHM_RND: i32 = 0o20000;
pub const SHM_REMAP: i32 = 0o40000;
pub const SHM_EXEC: i32 = 0o100000;
pub const SHMLBA: usize = 4096;

const CAP_IPC_LOCK: u32 = 14;
const CAP_IPC_OWNER: u32 = 15;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_ADMIN: u32 = 21;

/// Segments at least this big are released by an immediate message to the keeper.
const BIG_SEGMENT: u64 = 1 << 20;

/// MAX_LFS_FILESIZE (S40).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

fn einval<T>() -> SysResult<T> {
    Err(Errno(libc::EINVAL))
}

// ----------------------------------------------------------------- credentials

/// The caller's credentials, read lazily (only what a check needs).
pub struct Creds {
    pub euid: u32,
    pub egid: u32,
    caps: Option<u64>,
    groups: Option<Vec<u32>>,
}

impl Creds {
    pub fn current() -> Creds {
        let (euid, egid) = sys::eids();
        Creds { euid, egid, caps: None, groups: None }
    }

    pub fn capable(&mut self, cap: u32) -> bool {
        let caps = *self.caps.get_or_insert_with(sys::effective_caps);
        caps & (1u64 << cap) != 0
    }

    /// in_group_p: the fsgid or any supplementary group.
    fn in_group(&mut self, gid: u32) -> bool {
        if sys::getfsgid() == gid {
            return true;
        }
        self.groups.get_or_insert_with(sys::getgroups).contains(&gid)
    }

    fn is_owner(&self, s: &Slot) -> bool {
        self.euid == s.uid || self.euid == s.cuid
    }

    /// ipcperms (S112–S117): one class is chosen, its three bits decide, and
    /// CAP_IPC_OWNER overrides. `flag` is a mode mask such as 0444 or shmflg.
    pub fn ipcperms(&mut self, s: &Slot, flag: i32) -> bool {
        let flag = flag as i16 as i32; // the kernel takes a `short`
        let requested = (flag >> 6) | (flag >> 3) | flag;
        let mut granted = s.mode as i32;
        if self.is_owner(s) {
            granted >>= 6;
        } else if self.in_group(s.cgid) || self.in_group(s.gid) {
            granted >>= 3;
        }
        if requested & !granted & 0o7 != 0 && !self.capable(CAP_IPC_OWNER) {
            return false;
        }
        true
    }
}

// ----------------------------------------------------------------- helpers

/// shm_may_destroy + shm_destroy: a SHM_DEST segment goes when nattch reaches 0 (S75).
pub fn maybe_destroy(g: &RegGuard, slot: usize) {
    let s = g.slot(slot);
    if s.state == SLOT_USED && s.nattch == 0 && s.mode & SHM_DEST != 0 {
        shm_destroy(g, slot);
    }
}

/// Removes a segment: its id becomes invalid and its slot and pages return to the
/// shmmni/shmall budget (S75, S93). The keeper is told to close its descriptor.
pub fn shm_destroy(g: &RegGuard, slot: usize) {
    let s = g.slot(slot);
    if s.key != 0 && s.mode & SHM_DEST == 0 {
        g.index_remove(s.key, slot);
    }
    let serial = s.serial;
    s.state = SLOT_FREE; // primary: from here on the segment is gone
    s.keeper_fd.store(0, Ordering::Release);
    let h = g.hdr();
    h.in_use -= 1;
    h.shm_tot -= s.pages;
    g.recompute_max_idx();
    g.record_destroyed(serial);
    // The keeper notices destructions by destroy_epoch within milliseconds; a big
    // segment's memory is worth a message to release it at once.
    if s.map_len >= BIG_SEGMENT {
        keeper::notify(&crate::config::get().dir, keeper::Msg { op: keeper::OP_DROP, slot: slot as u32, serial, ..Default::default() });
    }
}

/// Detaches attach records of dead processes on `slot` (exit, SIGKILL and execve
/// release the liveness lock; S120–S123), so nattch is exact when observed.
fn reap_slot(g: &RegGuard, slot: usize, me: Option<usize>) {
    let holders = g.slot_holders(slot, me);
    if holders.is_empty() {
        return;
    }
    let now = sys::now();
    for p in holders {
        if !g.reg.proc_alive(p) {
            detach_proc(g, p, now);
        }
    }
}

/// Detaches everything proc entry `p` had attached, as its exit would (S120),
/// and destroys SHM_DEST segments it held last (S123).
pub fn detach_proc(g: &RegGuard, p: usize, now: i64) {
    for s in g.reap_proc(p, now) {
        maybe_destroy(g, s);
    }
}

/// Reaps every dead process (IPC_INFO/SHM_INFO, limit checks, the keeper's sweep).
pub fn reap_all(g: &RegGuard, me: Option<usize>) {
    let now = sys::now();
    for p in g.all_procs(me) {
        if !g.reg.proc_alive(p) {
            detach_proc(g, p, now);
        }
    }
}

pub fn reap_dead(reg: &Registry) {
    let g = reg.lock();
    reap_all(&g, None);
}

/// What `shmshim gc` did.
pub struct GcReport {
    pub procs: usize,
    pub fragments: u64,
    pub destroyed: usize,
}

/// Reaps every dead or exec'd attacher and reports what that changed.
pub fn gc(reg: &Registry) -> GcReport {
    let g = reg.lock();
    let before = g.hdr().in_use;
    let mut rep = GcReport { procs: 0, fragments: 0, destroyed: 0 };
    let now = sys::now();
    for p in g.all_procs(my_entry()) {
        if g.reg.proc_alive(p) {
            continue;
        }
        rep.fragments += g.proc_recs(p).map(|r| g.rec(r as usize).count as u64).sum::<u64>();
        rep.procs += 1;
        detach_proc(&g, p, now);
    }
    rep.destroyed = (before - g.hdr().in_use) as usize;
    rep
}

fn my_entry() -> Option<usize> {
    process::my_entry()
}

// ----------------------------------------------------------------- shmget

struct GetParams {
    key: i32,
    size: usize,
    flg: i32,
}

/// shmget(2): lookup or creation (S22–S48).
pub fn shmget(key: i32, size: usize, flg: i32) -> SysResult<i32> {
    let reg = process::registry()?;
    let p = GetParams { key, size, flg };
    if key != 0 {
        // Fast path: a lookup needs only the registry lock.
        let g = reg.lock();
        match g.find_key(key) {
            Some(slot) => return lookup_checks(&g, slot, &p),
            None if flg & IPC_CREAT == 0 => return Err(Errno(libc::ENOENT)), // S32
            None => {}
        }
    }
    let mut local = LOCAL.lock();
    let g = reg.lock();
    local.sweep_fds(&g);
    if key == 0 {
        // S22: IPC_PRIVATE always creates.
        return newseg(&mut local, &g, &p);
    }
    // Look again: the key may have been created while no lock was held.
    match g.find_key(key) {
        None => newseg(&mut local, &g, &p),
        Some(slot) => lookup_checks(&g, slot, &p),
    }
}

/// The lookup path's checks, in the kernel's order (S44).
fn lookup_checks(g: &RegGuard, slot: usize, p: &GetParams) -> SysResult<i32> {
    if p.flg & IPC_CREAT != 0 && p.flg & IPC_EXCL != 0 {
        return Err(Errno(libc::EEXIST)); // S34
    }
    let s = g.slot(slot);
    if (s.segsz as usize) < p.size {
        return einval(); // S30
    }
    if !Creds::current().ipcperms(s, p.flg) {
        return Err(Errno(libc::EACCES)); // S36, S117
    }
    Ok(make_id(s.seq, slot as u32))
}

/// Huge page size selected by shmflg bits 26..31 (S3); 0 = the default size.
fn hugepage_size(flg: i32) -> SysResult<usize> {
    let code = (flg as u32 >> 26) & 0x3f;
    let default = sys::read_small("/proc/meminfo")
        .and_then(|m| m.lines().find(|l| l.starts_with("Hugepagesize:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(2 << 20);
    let size = if code == 0 { default } else { 1usize.checked_shl(code).ok_or(Errno(libc::EINVAL))? };
    // Supported sizes are the hstates the kernel has.
    if std::path::Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{}kB", size / 1024)).is_dir() {
        Ok(size)
    } else {
        einval() // S45: unknown size code
    }
}

fn hugetlb_free_pages(size: usize) -> u64 {
    let rd = |f: &str| {
        sys::read_small(&format!("/sys/kernel/mm/hugepages/hugepages-{}kB/{f}", size / 1024))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    rd("free_hugepages").saturating_sub(rd("resv_hugepages"))
}

fn in_hugetlb_group(creds: &mut Creds) -> bool {
    sys::read_small("/proc/sys/vm/hugetlb_shm_group")
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|gid| creds.in_group(gid))
        .unwrap_or(false)
}

/// Commit accounting of shmem_acct_size (S41), emulated because memfds are never
/// accounted: overcommit mode 0 refuses more than RAM + swap, mode 2 enforces
/// CommitLimit (and then ignores SHM_NORESERVE).
fn commit_check(bytes: u64, noreserve: bool) -> SysResult<()> {
    use std::sync::atomic::{AtomicI64, AtomicU64};
    // The mode and RAM + swap are re-read at most once a second: reading procfs
    // on every creation would cost more than the creation itself.
    static READ_AT: AtomicI64 = AtomicI64::new(i64::MIN);
    static MODE: AtomicU64 = AtomicU64::new(0);
    static TOTAL_PAGES: AtomicU64 = AtomicU64::new(u64::MAX);
    let meminfo_field = |meminfo: &str, name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let now = sys::now();
    if READ_AT.load(Ordering::Acquire) != now {
        let mode = sys::read_small("/proc/sys/vm/overcommit_memory").and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        let meminfo = sys::read_small("/proc/meminfo").unwrap_or_default();
        let total = (meminfo_field(&meminfo, "MemTotal:") + meminfo_field(&meminfo, "SwapTotal:")) / PAGE as u64;
        MODE.store(mode, Ordering::Release);
        TOTAL_PAGES.store(if total == 0 { u64::MAX } else { total }, Ordering::Release);
        READ_AT.store(now, Ordering::Release);
    }
    let mode = MODE.load(Ordering::Acquire);
    if mode == 1 || (noreserve && mode != 2) {
        return Ok(());
    }
    let pages = bytes.div_ceil(PAGE as u64);
    let ok = if mode == 2 {
        let meminfo = sys::read_small("/proc/meminfo").unwrap_or_default();
        meminfo_field(&meminfo, "Committed_AS:") / PAGE as u64 + pages <= meminfo_field(&meminfo, "CommitLimit:") / PAGE as u64
    } else {
        pages <= TOTAL_PAGES.load(Ordering::Acquire)
    };
    if ok {
        Ok(())
    } else {
        Err(Errno(libc::ENOMEM))
    }
}

/// A memfd claimed from the keeper's pool; put back unless `commit`ted.
struct PoolClaim<'a> {
    entry: &'a registry::PoolEntry,
    fd: i32,
    done: bool,
}

impl PoolClaim<'_> {
    /// The segment `serial` keeps it: the keeper files it under that serial.
    fn commit(mut self, serial: u64) {
        self.entry.taken.store(serial, Ordering::Release);
        self.done = true;
    }
}

impl Drop for PoolClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.entry.fd.store(self.fd, Ordering::Release);
        }
    }
}

/// Claims a memfd from the keeper's pool and opens it through /proc/KEEPER/fd
/// (possible for the keeper's uid), checked by inode. Lock-free with respect to
/// the keeper (see `registry::PoolEntry`).
fn take_pooled<'a>(g: &RegGuard<'a>) -> Option<(OwnedFd, PoolClaim<'a>)> {
    let hdr: &'a registry::Header = g.reg.header();
    let kpid = hdr.keeper_pid.load(Ordering::Acquire);
    if kpid <= 0 {
        return None;
    }
    for e in hdr.pool.iter() {
        let fd = e.fd.load(Ordering::Acquire);
        if fd <= 0 || e.taken.load(Ordering::Acquire) != 0 {
            continue;
        }
        if e.fd.compare_exchange(fd, -fd, Ordering::AcqRel, Ordering::Acquire).is_err() {
            continue;
        }
        let claim = PoolClaim { entry: e, fd, done: false };
        let ino = e.ino.load(Ordering::Acquire);
        let path = std::ffi::CString::new(format!("/proc/{kpid}/fd/{fd}")).ok()?;
        match sys::open(&path, libc::O_RDWR, 0) {
            Ok(f) if sys::fstat(f.as_raw_fd()).map(|st| st.st_ino == ino).unwrap_or(false) => return Some((f, claim)),
            Ok(_) | Err(Errno(libc::ENOENT)) => {
                // Not that memfd any more (a keeper restarted): leave the entry
                // claimed; the keeper's next full sweep sorts it out.
                std::mem::forget(claim);
            }
            Err(_) => return None, // another uid's keeper, or /proc is closed
        }
    }
    None
}

/// newseg: the creation path, checks in the kernel's order (S43).
fn newseg(local: &mut Local, g: &RegGuard, p: &GetParams) -> SysResult<i32> {
    let h = g.hdr();
    let size = p.size;
    let mut creds = Creds::current();
    // S33: below SHMMIN or above shmmax.
    if size < 1 || size as u64 > h.shmmax {
        return einval();
    }
    // S39: page rounding overflows.
    let numpages = (size.wrapping_add(PAGE - 1) / PAGE) as u64;
    if numpages.wrapping_mul(PAGE as u64) < size as u64 {
        return Err(Errno(libc::ENOSPC));
    }
    // S38: shmall (after a reap, as dead attachers may still pin SHM_DEST pages).
    let over_all = |h: &registry::Header| h.shm_tot.checked_add(numpages).map(|t| t > h.shmall).unwrap_or(true);
    if over_all(h) {
        reap_all(g, local.me);
        if over_all(g.hdr()) {
            return Err(Errno(libc::ENOSPC));
        }
    }
    let hugetlb = p.flg & SHM_HUGETLB != 0;
    let noreserve = p.flg & SHM_NORESERVE != 0;
    let mut map_len = numpages as usize * PAGE;
    let mut mfd_flags = libc::MFD_CLOEXEC;
    let mut huge_page = None;
    if hugetlb {
        let hsize = hugepage_size(p.flg)?; // S45: EINVAL first
        huge_page = Some(hsize);
        if !creds.capable(CAP_IPC_LOCK) && !in_hugetlb_group(&mut creds) {
            return Err(Errno(libc::EPERM)); // S45
        }
        map_len = size.checked_add(hsize - 1).ok_or(Errno(libc::ENOSPC))? / hsize * hsize;
        if !noreserve && hugetlb_free_pages(hsize) < (map_len / hsize) as u64 {
            return Err(Errno(libc::ENOMEM)); // S46
        }
        mfd_flags |= libc::MFD_HUGETLB | (((hsize.trailing_zeros()) & 0x3f) << 26);
    } else {
        // S40/S41: shmem_kernel_file_setup refuses sizes above MAX_LFS_FILESIZE,
        // then accounts the memory unless SHM_NORESERVE.
        if size as u64 > MAX_LFS_FILESIZE {
            return einval();
        }
        commit_check(size as u64, noreserve)?;
    }
    // A memfd from the keeper's pool (no message needed: the keeper holds it
    // already), else a new one handed to the keeper below.
    let (pooled, fd) = match if hugetlb { None } else { take_pooled(g) } {
        Some((fd, claim)) => (Some(claim), fd),
        None => {
            let name = std::ffi::CString::new(format!("SYSV{:08x}", p.key as u32)).unwrap();
            let fd = sys::memfd_create(&name, mfd_flags).map_err(|e| match e.0 {
                libc::EMFILE | libc::ENFILE => Errno(libc::ENFILE),
                _ => Errno(libc::ENOMEM),
            })?;
            (None, fd)
        }
    };
    // The file is segsz long (hugetlbfs needs whole huge pages); the mapping covers
    // the rounded length, as the kernel's does (S50).
    // A hugetlb file is sized in whole huge pages, at most MAX_LFS_FILESIZE (the
    // kernel's own hugetlb shm files are not bound by it; such sizes cannot be
    // attached anyway).
    let file_len = match huge_page {
        Some(h) => (map_len as u64).min(MAX_LFS_FILESIZE & !(h as u64 - 1)) as usize,
        None => size,
    };
    sys::ftruncate(fd.as_raw_fd(), file_len as u64).map_err(|_| Errno(libc::ENOMEM))?;
    let ino = match &pooled {
        Some(c) => c.entry.ino.load(Ordering::Acquire),
        None => sys::fstat(fd.as_raw_fd()).map(|st| st.st_ino).unwrap_or(0),
    };
    // S37: shmmni, checked last (ipc_addid). SHM_DEST segments count.
    let limit = h.shmmni.min(MAX_SLOTS as u64);
    if h.in_use as u64 >= limit {
        reap_all(g, local.me);
        if g.hdr().in_use as u64 >= limit {
            return Err(Errno(libc::ENOSPC));
        }
    }
    let (idx, seq) = g.alloc_idx().ok_or(Errno(libc::ENOSPC))?;
    let serial = h.next_serial;
    // The memfd must outlive this process (S127): a pooled one is the keeper's
    // already; a new one is handed to the keeper before the segment is visible.
    match pooled {
        Some(claim) => {
            g.slot(idx).set_keeper_fd(serial, claim.fd);
            claim.commit(serial);
            h.pool_taken.fetch_add(1, Ordering::AcqRel);
            // Half the pool gone: wake the keeper to refill (once, no waiting).
            let left = h.pool.iter().filter(|e| e.fd.load(Ordering::Relaxed) > 0).count();
            if left < registry::POOL_SIZE / 2 && h.refill_asked.swap(1, Ordering::AcqRel) == 0 {
                keeper::notify(&crate::config::get().dir, keeper::Msg { op: keeper::OP_REFILL, ..Default::default() });
            }
        }
        None => {
            let msg = keeper::Msg { op: keeper::OP_PUT, slot: idx as u32, serial, ..Default::default() };
            keeper::send(&crate::config::get().dir, msg, &[fd.as_raw_fd()], true)?;
        }
    }
    h.next_serial += 1;
    let now = sys::now();
    let s = g.slot(idx);
    s.flags = if hugetlb { F_HUGETLB } else { 0 } | if noreserve { F_NORESERVE } else { 0 };
    s.key = p.key;
    s.mode = (p.flg & 0o777) as u32; // S23, S26
    s.uid = creds.euid; // S116
    s.cuid = creds.euid;
    s.gid = creds.egid;
    s.cgid = creds.egid;
    s.seq = seq;
    s.cpid = sys::getpid();
    s.lpid = 0;
    s.lock_uid = 0;
    s.segsz = size as u64; // S25
    s.atime = 0;
    s.dtime = 0;
    s.ctime = now;
    s.nattch = 0;
    s.serial = serial;
    s.map_len = map_len as u64;
    s.pages = numpages;
    s.ino = ino;
    s.rec_head = registry::NIL;
    s.state = SLOT_USED; // primary: visible from here on
    h.in_use += 1;
    h.shm_tot += numpages;
    h.max_idx = h.max_idx.max(idx as i32);
    if p.key != 0 {
        g.index_insert(p.key, idx);
    }
    local.cache_fd(idx, serial, ino, fd);
    Ok(make_id(seq, idx as u32))
}

// ----------------------------------------------------------------- shmat

/// Everything shmat needs from a slot, copied under the lock.
struct SegInfo {
    slot: usize,
    serial: u64,
    ino: u64,
    map_len: usize,
    segsz: usize,
    noreserve: bool,
    /// The keeper's fd number for this incarnation, if published.
    keeper_fd: Option<i32>,
}

/// shmat(2) (S49–S67), checks in the order of S65.
pub fn do_shmat(id: i32, shmaddr: usize, flg: i32) -> SysResult<usize> {
    if id < 0 {
        return einval(); // S15
    }
    let mut addr = shmaddr;
    if addr != 0 {
        if addr & (SHMLBA - 1) != 0 {
            if flg & SHM_RND != 0 {
                addr &= !(SHMLBA - 1); // S57
                if addr == 0 && flg & SHM_REMAP != 0 {
                    return einval(); // S60
                }
            } else {
                return einval(); // S57
            }
        }
    } else if flg & SHM_REMAP != 0 {
        return einval(); // S60
    }
    let fixed = shmaddr != 0;
    let (mut prot, mut acc) = if flg & SHM_RDONLY != 0 { (libc::PROT_READ, 0o444) } else { (libc::PROT_READ | libc::PROT_WRITE, 0o666) };
    if flg & SHM_EXEC != 0 {
        prot |= libc::PROT_EXEC; // S54
        acc |= 0o111;
    }
    let reg = process::registry()?;
    let mut local = LOCAL.lock();
    let me = process::ensure_proc(&mut local, reg)?;
    // Lookup, permission, and a temporary hold on nattch (as the kernel's
    // shm_nattch++ in do_shmat) so IPC_RMID meanwhile only defers.
    let info = {
        let g = reg.lock();
        local.sweep_fds(&g);
        let slot = match g.slot_of_id(id) {
            Some(s) => s,
            None => return einval(), // S13, S14
        };
        reap_slot(&g, slot, Some(me));
        if g.slot(slot).state != SLOT_USED {
            return einval(); // S66: destroyed at its last detach
        }
        let s = g.slot(slot);
        if !Creds::current().ipcperms(s, acc) {
            return Err(Errno(libc::EACCES)); // S67
        }
        g.rec_add(me, slot, 1)?;
        SegInfo {
            slot,
            serial: s.serial,
            ino: s.ino,
            map_len: s.map_len as usize,
            segsz: s.segsz as usize,
            noreserve: s.flags & F_NORESERVE != 0,
            keeper_fd: s.keeper_fd_of(s.serial),
        }
    };
    let res = map_segment(&mut local, reg, &info, addr, fixed, flg, prot);
    let g = reg.lock();
    match res {
        Ok(at) => {
            if flg & SHM_REMAP != 0 {
                // S59: whatever was mapped there is gone, attaches included.
                let deltas = apply_local(&mut local, at, info.map_len, VmChange::Unmap);
                book_deltas(&g, me, deltas);
            }
            let s = g.slot(info.slot);
            s.atime = sys::now(); // S51
            s.lpid = sys::getpid();
            local.attaches.push(Attach {
                slot: info.slot,
                serial: info.serial,
                map_len: info.map_len,
                frags: vec![Frag { addr: at, len: info.map_len, pgoff: 0, flags: prot as u32 }],
            });
            local.publish_count();
            Ok(at)
        }
        Err(e) => {
            // Drop the temporary hold; a SHM_DEST segment may go now (S64: nattch
            // unchanged on failure).
            if g.slot(info.slot).state == SLOT_USED && g.slot(info.slot).serial == info.serial {
                g.rec_sub(me, info.slot, 1);
                maybe_destroy(&g, info.slot);
            }
            Err(e)
        }
    }
}

/// Gets a descriptor and maps it: overlap → EINVAL unless SHM_REMAP (S58, S59),
/// wrap → EINVAL, beyond user space → ENOMEM (S63).
fn map_segment(local: &mut Local, reg: &Registry, info: &SegInfo, addr: usize, fixed: bool, flg: i32, prot: i32) -> SysResult<usize> {
    let rdonly = flg & SHM_RDONLY != 0;
    if fixed && flg & SHM_REMAP == 0 && addr.checked_add(info.segsz).is_none() {
        return einval(); // S63
    }
    let fd = segment_fd(local, reg, info, rdonly)?;
    let mut flags = libc::MAP_SHARED;
    if info.noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    if fixed {
        if addr == 0 {
            // S61: a SHM_RND address that rounds to 0 attaches at 0, which needs
            // CAP_SYS_RAWIO (vm.mmap_min_addr).
            if !Creds::current().capable(CAP_SYS_RAWIO) {
                return Err(Errno(libc::EACCES));
            }
        }
        flags |= if flg & SHM_REMAP != 0 { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    }
    match sys::mmap(addr, info.map_len, prot, flags, fd, 0) {
        Ok(at) if fixed && at != addr => {
            // A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
            let _ = sys::munmap(at, info.map_len);
            einval()
        }
        Ok(at) => Ok(at),
        Err(Errno(libc::EEXIST)) => einval(), // S58
        // S65: the kernel checks overlap before it maps; mmap reports a range
        // running past user space (ENOMEM) first, so check overlap ourselves.
        Err(Errno(libc::ENOMEM)) if fixed && flg & SHM_REMAP == 0 && sys::range_has_mapping(addr, addr.saturating_add(info.segsz)) => einval(),
        Err(e) => Err(e),
    }
}

/// A descriptor for the segment: the process cache, the keeper's /proc entry
/// (same uid), or the keeper's SCM_RIGHTS reply (any uid). Each is checked to be
/// the segment's inode.
fn segment_fd(local: &mut Local, reg: &Registry, info: &SegInfo, rdonly: bool) -> SysResult<i32> {
    if let Some(fd) = local.cached_fd(info.serial, info.ino, rdonly) {
        return Ok(fd);
    }
    let dir = &crate::config::get().dir;
    let is_seg = |f: &OwnedFd| sys::fstat(f.as_raw_fd()).map(|st| st.st_ino == info.ino).unwrap_or(false);
    let fd = proc_keeper_fd(reg, info)
        .filter(is_seg)
        .or_else(|| keeper::get(dir, info.slot, info.serial).ok().filter(is_seg))
        .or_else(|| {
            // The keeper lost it (it died): take it from a live holder and hand
            // it to a (restarted) keeper again.
            let pids = keeper::live_pids(&reg.lock());
            let fd = keeper::recover_fd(&pids, info.ino)?;
            let msg = keeper::Msg { op: keeper::OP_PUT, slot: info.slot as u32, serial: info.serial, ..Default::default() };
            let _ = keeper::send(dir, msg, &[fd.as_raw_fd()], true);
            Some(fd)
        });
    // S16: none of them has it: it was destroyed meanwhile.
    let fd = fd.filter(is_seg).ok_or(Errno(libc::EIDRM))?;
    local.cache_fd(info.slot, info.serial, info.ino, fd);
    local.cached_fd(info.serial, info.ino, rdonly).ok_or(Errno(libc::ENOMEM))
}

fn proc_keeper_fd(reg: &Registry, info: &SegInfo) -> Option<OwnedFd> {
    let kpid = reg.header().keeper_pid.load(Ordering::Acquire);
    let n = info.keeper_fd?;
    if kpid <= 0 {
        return None;
    }
    let p = std::ffi::CString::new(format!("/proc/{kpid}/fd/{n}")).ok()?;
    sys::open(&p, libc::O_RDWR, 0).ok()
}

// ----------------------------------------------------------------- shmdt / munmap

/// shm_close for `n` fragments of one attach: nattch, dtime, lpid (S69, S73), and
/// destruction of a SHM_DEST segment at its last detach (S75).
fn shm_close_frags(g: &RegGuard, me: usize, slot: usize, serial: u64, n: u32) {
    let s = g.slot(slot);
    if s.state != SLOT_USED || s.serial != serial || n == 0 {
        return;
    }
    g.rec_sub(me, slot, n);
    s.dtime = sys::now();
    s.lpid = sys::getpid();
    maybe_destroy(g, slot);
}

/// shmdt(2) (S69–S76): finds the first fragment at or above `addr` whose distance
/// from `addr` equals its offset in the segment, then removes every fragment of
/// that same attach lying within the segment size from `addr` (S71).
pub fn shmdt(addr: usize) -> SysResult<()> {
    if addr & (PAGE - 1) != 0 {
        return einval(); // S70
    }
    let Some(reg) = process::registry_if_open() else { return einval() };
    let mut local = LOCAL.lock();
    let mut best: Option<(usize, usize)> = None; // (frag addr, attach index)
    for (ai, a) in local.attaches.iter().enumerate() {
        for f in &a.frags {
            if f.addr >= addr && f.addr - addr == f.pgoff && best.map(|b| f.addr < b.0).unwrap_or(true) {
                best = Some((f.addr, ai));
            }
        }
    }
    let Some((_, ai)) = best else { return einval() }; // S70
    let bound = local.attaches[ai].map_len;
    let mut removed = 0u32;
    let a = &mut local.attaches[ai];
    a.frags.retain(|f| {
        let take = f.addr >= addr && f.addr - addr == f.pgoff && f.addr + f.len - addr <= bound;
        if take {
            let _ = sys::munmap(f.addr, f.len);
            removed += 1;
        }
        !take
    });
    let (slot, serial) = (a.slot, a.serial);
    if a.frags.is_empty() {
        local.attaches.swap_remove(ai);
    }
    local.publish_count();
    if let Ok(me) = process::ensure_proc(&mut local, reg) {
        let g = reg.lock();
        shm_close_frags(&g, me, slot, serial, removed);
        local.sweep_fds(&g); // a destroyed segment's memory goes now
    }
    Ok(())
}

/// What a memory-management call did to the address space, for fragment tracking.
#[derive(Clone, Copy)]
pub enum VmChange {
    /// munmap, or a MAP_FIXED mapping placed over the range: the range is gone
    /// (S73; partial unmaps split, S71/S72).
    Unmap,
    /// mprotect: new PROT_* bits (S72).
    Prot(i32),
    /// madvise: set (true) or clear an FL_* flag (S124).
    Flag(u32, bool),
}

impl VmChange {
    fn new_flags(self, old: u32) -> u32 {
        match self {
            VmChange::Unmap => old,
            VmChange::Prot(p) => (old & !7) | (p as u32 & 7),
            VmChange::Flag(f, true) => old | f,
            VmChange::Flag(f, false) => old & !f,
        }
    }
}

/// Applies a change over `[start, end)` to one attach's fragments (sorted by
/// address) the way the kernel changes VMAs. Returns (opens, closes): VMAs made
/// by splitting (the kernel calls shm_open on each: nattch+1, shm_atime,
/// shm_lpid) and VMAs removed (shm_close: nattch-1, shm_dtime, shm_lpid).
///
/// Removal splits. A flag change splits too, but the kernel merges the changed
/// piece into an adjacent fragment of the same attach with equal flags when that
/// deletes no VMA: shm VMAs have a close() method, so a change spanning a whole
/// fragment never merges (which is why restoring a protection leaves the pieces
/// apart, S72).
fn apply_frags(frags: &mut Vec<Frag>, start: usize, end: usize, change: VmChange) -> (u32, u32) {
    let (mut opens, mut closes) = (0u32, 0u32);
    let mut i = 0;
    while i < frags.len() {
        let f = frags[i].clone();
        if f.end() <= start || f.addr >= end {
            i += 1;
            continue;
        }
        let (s, e) = (f.addr.max(start), f.end().min(end));
        let piece = |a: usize, b: usize, flags: u32| Frag { addr: a, len: b - a, pgoff: f.pgoff + (a - f.addr), flags };
        if let VmChange::Unmap = change {
            let mut rest = Vec::new();
            if f.addr < s {
                rest.push(piece(f.addr, s, f.flags));
            }
            if e < f.end() {
                rest.push(piece(e, f.end(), f.flags));
            }
            let n = rest.len();
            opens += n as u32; // each cut inside the fragment is a split
            closes += 1;
            frags.splice(i..i + 1, rest);
            i += n;
            continue;
        }
        let nf = change.new_flags(f.flags);
        if nf == f.flags {
            i += 1;
            continue;
        }
        let (left_side, right_side) = (s == f.addr, e == f.end());
        if left_side && right_side {
            frags[i].flags = nf;
            i += 1;
            continue;
        }
        let joins_prev = left_side && i > 0 && {
            let p = &frags[i - 1];
            p.end() == f.addr && p.pgoff + p.len == f.pgoff && p.flags == nf
        };
        if joins_prev {
            frags[i - 1].len += e - s;
            frags[i] = piece(e, f.end(), f.flags);
            i += 1;
            continue;
        }
        let joins_next = right_side && i + 1 < frags.len() && {
            let n = &frags[i + 1];
            n.addr == f.end() && f.pgoff + f.len == n.pgoff && n.flags == nf
        };
        if joins_next {
            let n = &mut frags[i + 1];
            n.addr = s;
            n.pgoff -= e - s;
            n.len += e - s;
            frags[i] = piece(f.addr, s, f.flags);
            i += 2;
            continue;
        }
        let mut parts = Vec::new();
        if f.addr < s {
            parts.push(piece(f.addr, s, f.flags));
        }
        parts.push(piece(s, e, nf));
        if e < f.end() {
            parts.push(piece(e, f.end(), f.flags));
        }
        let n = parts.len();
        opens += n as u32 - 1;
        frags.splice(i..i + 1, parts);
        i += n;
    }
    (opens, closes)
}

/// Keeps the real VMAs equal to the fragment model. memfd VMAs (unlike shm VMAs)
/// merge whenever their flags match, so adjacent fragments of one attach get
/// alternating read hints (MADV_NORMAL / MADV_RANDOM, invisible in the maps
/// permissions and harmless for shared memory), which keeps them apart.
fn rehint(a: &Attach) {
    if a.frags.len() < 2 {
        return;
    }
    for (k, f) in a.frags.iter().enumerate() {
        let advice = if k % 2 == 1 { libc::MADV_RANDOM } else { libc::MADV_NORMAL };
        sys::madvise(f.addr, f.len, advice);
    }
}

/// Applies a change to every attach of this process and returns, per segment,
/// the VMAs opened and closed.
fn apply_local(local: &mut Local, addr: usize, len: usize, change: VmChange) -> Vec<(usize, u64, u32, u32)> {
    let end = addr.saturating_add(len.div_ceil(PAGE) * PAGE);
    let mut deltas = Vec::new();
    for a in local.attaches.iter_mut() {
        let touched = a.frags.iter().any(|f| f.addr < end && f.end() > addr);
        let (opens, closes) = apply_frags(&mut a.frags, addr, end, change);
        if touched && !matches!(change, VmChange::Unmap) {
            rehint(a);
        }
        if opens + closes != 0 {
            deltas.push((a.slot, a.serial, opens, closes));
        }
    }
    local.attaches.retain(|a| !a.frags.is_empty());
    local.publish_count();
    deltas
}

/// Books VMA changes in the registry in the kernel's order: the splits' opens
/// (nattch, atime, lpid; S72), then the closes (nattch, dtime, lpid, and
/// destruction of a SHM_DEST segment at its last detach).
fn book_deltas(g: &RegGuard, me: usize, deltas: Vec<(usize, u64, u32, u32)>) {
    for (slot, serial, opens, closes) in deltas {
        shm_open_frags(g, me, slot, serial, opens);
        shm_close_frags(g, me, slot, serial, closes);
    }
}

/// shm_open for `n` new VMAs of one attach (splits, mremap copies).
fn shm_open_frags(g: &RegGuard, me: usize, slot: usize, serial: u64, n: u32) {
    let s = g.slot(slot);
    if n == 0 || s.state != SLOT_USED || s.serial != serial {
        return;
    }
    let _ = g.rec_add(me, slot, n);
    s.atime = sys::now();
    s.lpid = sys::getpid();
}

/// Runs a munmap/mprotect/madvise/MAP_FIXED mmap (`op`, which returns the
/// address it affected) and follows its effect on `[addr, addr+len)` — both under
/// this process's lock, so no shmat or other memory call of another thread can
/// land between the system call and its bookkeeping.
pub fn vm_changed(addr: usize, len: usize, change: VmChange, op: impl FnOnce() -> SysResult<usize>) -> SysResult<usize> {
    let Some(reg) = process::registry_if_open() else { return op() };
    let mut local = LOCAL.lock();
    let at = op()?;
    let addr = if addr == 0 { at } else { addr };
    let Ok(me) = process::ensure_proc(&mut local, reg) else { return Ok(at) };
    let deltas = apply_local(&mut local, addr, len, change);
    if !deltas.is_empty() {
        let g = reg.lock();
        book_deltas(&g, me, deltas);
        local.sweep_fds(&g);
    }
    Ok(at)
}

/// Runs an mremap (`op`, returning the new address) of `[old, old+old_len)` and
/// follows it under this process's lock: the piece keeps its segment offset, so
/// shmdt(new address) works and shmdt(old) fails (S74).
pub fn vm_remapped(old: usize, old_len: usize, new_len: usize, op: impl FnOnce() -> SysResult<usize>) -> SysResult<usize> {
    let Some(reg) = process::registry_if_open() else { return op() };
    let mut local = LOCAL.lock();
    let new = op()?;
    let Ok(me) = process::ensure_proc(&mut local, reg) else { return Ok(new) };
    let moved = local.attaches.iter().find_map(|a| {
        a.frags.iter().find(|f| old >= f.addr && old < f.addr + f.len).map(|f| (a.slot, a.serial, a.map_len, f.pgoff + (old - f.addr), f.flags))
    });
    let Some((slot, serial, map_len, pgoff, flags)) = moved else { return Ok(new) };
    // The kernel copies the VMA first (shm_open on the copy), then unmaps the old
    // one (shm_close): in that order a removed segment's last attach survives
    // being moved. With old_len 0 the old mapping stays (a duplicate).
    let g = reg.lock();
    shm_open_frags(&g, me, slot, serial, 1);
    let deltas = if old_len > 0 { apply_local(&mut local, old, old_len, VmChange::Unmap) } else { Vec::new() };
    let frag = Frag { addr: new, len: new_len.div_ceil(PAGE) * PAGE, pgoff, flags };
    match local.attaches.iter_mut().find(|a| a.serial == serial) {
        Some(a) => {
            a.frags.push(frag);
            a.frags.sort_by_key(|f| f.addr);
        }
        None => local.attaches.push(Attach { slot, serial, map_len, frags: vec![frag] }),
    }
    local.publish_count();
    book_deltas(&g, me, deltas);
    local.sweep_fds(&g);
    Ok(new)
}

// ----------------------------------------------------------------- shmctl

/// Builds the x86_64 `struct shmid_ds` (112 bytes, S142/S143).
fn shmid_ds_bytes(s: &Slot, nattch: u64) -> [u8; 112] {
    let mut b = [0u8; 112];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0, &s.key.to_ne_bytes());
    put(4, &s.uid.to_ne_bytes());
    put(8, &s.gid.to_ne_bytes());
    put(12, &s.cuid.to_ne_bytes());
    put(16, &s.cgid.to_ne_bytes());
    put(20, &s.mode.to_ne_bytes());
    put(24, &(s.seq as u16).to_ne_bytes());
    put(48, &s.segsz.to_ne_bytes());
    put(56, &s.atime.to_ne_bytes());
    put(64, &s.dtime.to_ne_bytes());
    put(72, &s.ctime.to_ne_bytes());
    put(80, &s.cpid.to_ne_bytes());
    put(84, &s.lpid.to_ne_bytes());
    put(88, &nattch.to_ne_bytes());
    b
}

/// A snapshot of a segment's `struct shmid_ds`, for the CLI and tests.
pub struct SegStat {
    pub id: i32,
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
    pub segsz: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
    pub rss_pages: u64,
}

/// Every segment in index order, dead attachers reaped first (for `shmshim ls`).
pub fn list_segments(reg: &Registry) -> Vec<SegStat> {
    let g = reg.lock();
    reap_all(&g, my_entry());
    (0..=g.hdr().max_idx.max(-1))
        .map(|i| i as usize)
        .filter(|&i| g.slot(i).state == SLOT_USED)
        .map(|i| {
            let s = g.slot(i);
            SegStat {
                id: make_id(s.seq, i as u32),
                key: s.key,
                uid: s.uid,
                gid: s.gid,
                cuid: s.cuid,
                cgid: s.cgid,
                mode: s.mode,
                segsz: s.segsz,
                atime: s.atime,
                dtime: s.dtime,
                ctime: s.ctime,
                cpid: s.cpid,
                lpid: s.lpid,
                nattch: s.nattch,
                rss_pages: resident_pages(reg, s, LOCAL.try_lock().as_deref()),
            }
        })
        .collect()
}

/// The namespace as /proc/sysvipc/shm shows it on 64-bit kernels (S138–S140).
pub fn sysvipc_text(reg: &Registry) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n",
    );
    for s in list_segments(reg) {
        let _ = writeln!(
            out,
            "{:>10} {:>10}  {:>4o} {:>21} {:>5} {:>5}  {:>5} {:>5} {:>5} {:>5} {:>5} {:>10} {:>10} {:>10} {:>21} {:>21}",
            s.key,
            s.id,
            s.mode,
            s.segsz,
            s.cpid,
            s.lpid,
            s.nattch,
            s.uid,
            s.gid,
            s.cuid,
            s.cgid,
            s.atime,
            s.dtime,
            s.ctime,
            s.rss_pages * PAGE as u64,
            0
        );
    }
    out
}

/// Resident pages of a segment (SHM_INFO shm_rss): the memfd's allocated blocks.
fn resident_pages(reg: &Registry, s: &Slot, local: Option<&Local>) -> u64 {
    if let Some(st) = local.and_then(|l| l.fds.get(&s.serial)).and_then(|c| sys::fstat(c.rw).ok()).filter(|st| st.st_ino == s.ino) {
        return st.st_blocks as u64 * 512 / PAGE as u64;
    }
    let kpid = reg.header().keeper_pid.load(Ordering::Acquire);
    if let (true, Some(kfd)) = (kpid > 0, s.keeper_fd_of(s.serial)) {
        if let Ok(md) = std::fs::metadata(format!("/proc/{kpid}/fd/{kfd}")) {
            use std::os::unix::fs::MetadataExt;
            if md.ino() == s.ino {
                return md.blocks() * 512 / PAGE as u64;
            }
        }
    }
    0
}

/// shmctl's copy-out: up to a struct shmid_ds of bytes, and how many.
type CopyOut = ([u8; 112], usize);

/// A shorter struct (shminfo, shm_info) in shmctl's copy-out buffer.
fn padded(b: &[u8]) -> CopyOut {
    let mut out = [0u8; 112];
    out[..b.len()].copy_from_slice(b);
    (out, b.len())
}

/// ipc_get_maxidx (S99): -1 when empty, reported as 0.
fn max_idx_ret(g: &RegGuard) -> i32 {
    let h = g.hdr();
    if h.in_use == 0 {
        0
    } else if h.in_use as usize == MAX_SLOTS {
        MAX_SLOTS as i32 - 1
    } else {
        h.max_idx.max(0)
    }
}

/// shmctl(2) (S77–S111).
pub fn shmctl(id: i32, cmd: i32, buf: usize) -> SysResult<i32> {
    if cmd < 0 || id < 0 {
        return einval(); // S15, S77
    }
    match cmd {
        IPC_INFO | SHM_INFO | IPC_STAT | SHM_STAT | SHM_STAT_ANY | IPC_SET | IPC_RMID | SHM_LOCK | SHM_UNLOCK => {}
        _ => return einval(), // S78
    }
    // S90: IPC_SET copies buf in before the id is looked up.
    let mut setbuf = [0u8; 112];
    if cmd == IPC_SET {
        sys::copy_from_user(&mut setbuf, buf)?;
    }
    let reg = process::registry()?;
    let me = my_entry();
    // LOCAL first (lock order), so that descriptors of segments this call
    // destroys are dropped before it returns.
    let mut local = LOCAL.lock();
    let g = reg.lock();
    let r = shmctl_locked(&g, reg, &local, me, id, cmd, &setbuf);
    local.sweep_fds(&g);
    drop(g);
    let (ret, out) = r?;
    if let Some((bytes, len)) = out {
        sys::copy_to_user(buf, &bytes[..len])?;
    }
    Ok(ret)
}

/// shmctl's work under the lock; returns the result and the bytes to copy out
/// (copied after the lock is released, as the kernel does).
fn shmctl_locked(g: &RegGuard, reg: &Registry, local: &Local, me: Option<usize>, id: i32, cmd: i32, setbuf: &[u8; 112]) -> SysResult<(i32, Option<CopyOut>)> {
    match cmd {
        IPC_INFO => {
            reap_all(g, me);
            let h = g.hdr();
            let mut b = [0u8; 72];
            let vals = [h.shmmax, 1, h.shmmni, h.shmmni, h.shmall];
            for (i, v) in vals.iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
            }
            let ret = max_idx_ret(g);
            Ok((ret, Some(padded(&b)))) // S100: EFAULT from the copy-out
        }
        SHM_INFO => {
            reap_all(g, me);
            let h = g.hdr();
            let mut rss = 0u64;
            for i in 0..=(h.max_idx.max(-1)) {
                let s = g.slot(i as usize);
                if s.state == SLOT_USED {
                    rss += resident_pages(reg, s, Some(local));
                }
            }
            let mut b = [0u8; 48];
            b[0..4].copy_from_slice(&(h.in_use as i32).to_ne_bytes());
            b[8..16].copy_from_slice(&h.shm_tot.to_ne_bytes());
            b[16..24].copy_from_slice(&rss.to_ne_bytes());
            let ret = max_idx_ret(g);
            Ok((ret, Some(padded(&b)))) // S101
        }
        IPC_STAT | SHM_STAT | SHM_STAT_ANY => {
            let slot = if cmd == IPC_STAT {
                g.slot_of_id(id).ok_or(Errno(libc::EINVAL))? // S13
            } else {
                let idx = id_idx(id); // S102: only the low 15 bits
                if g.slot(idx).state != SLOT_USED {
                    return einval(); // S103
                }
                idx
            };
            reap_slot(g, slot, me);
            let s = g.slot(slot);
            if s.state != SLOT_USED {
                return einval();
            }
            if cmd != SHM_STAT_ANY && !Creds::current().ipcperms(s, 0o444) {
                return Err(Errno(libc::EACCES)); // S82, S104
            }
            let bytes = shmid_ds_bytes(s, s.nattch);
            let ret = if cmd == IPC_STAT { 0 } else { make_id(s.seq, slot as u32) };
            Ok((ret, Some((bytes, bytes.len())))) // S84, S103
        }
        IPC_SET | IPC_RMID => {
            let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?;
            let mut creds = Creds::current();
            let s = g.slot(slot);
            // S88, S92: owner, creator, or CAP_SYS_ADMIN.
            if !creds.is_owner(s) && !creds.capable(CAP_SYS_ADMIN) {
                return Err(Errno(libc::EPERM));
            }
            if cmd == IPC_SET {
                let uid = u32::from_ne_bytes(setbuf[4..8].try_into().unwrap());
                let gid = u32::from_ne_bytes(setbuf[8..12].try_into().unwrap());
                let mode = u32::from_ne_bytes(setbuf[20..24].try_into().unwrap());
                if uid == u32::MAX || gid == u32::MAX {
                    return einval(); // S89
                }
                s.uid = uid;
                s.gid = gid;
                s.mode = (s.mode & !0o777) | (mode & 0o777); // S87, S91
                s.ctime = sys::now();
                return Ok((0, None));
            }
            // do_shm_rmid (S93–S97).
            reap_slot(g, slot, me);
            let s = g.slot(slot);
            if s.state != SLOT_USED {
                return Ok((0, None));
            }
            if s.nattch > 0 {
                if s.key != 0 && s.mode & SHM_DEST == 0 {
                    g.index_remove(s.key, slot);
                }
                s.mode |= SHM_DEST;
                s.key = 0; // S94
            } else {
                shm_destroy(g, slot);
            }
            Ok((0, None))
        }
        SHM_LOCK | SHM_UNLOCK => {
            let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?; // S111
            let mut creds = Creds::current();
            let s = g.slot(slot);
            if !creds.capable(CAP_IPC_LOCK) {
                if !creds.is_owner(s) {
                    return Err(Errno(libc::EPERM)); // S107
                }
                if cmd == SHM_LOCK && sys::rlimit_memlock() == 0 {
                    return Err(Errno(libc::EPERM)); // S108
                }
            }
            if s.flags & F_HUGETLB != 0 {
                return Ok((0, None)); // S110
            }
            if cmd == SHM_LOCK {
                if s.mode & SHM_LOCKED == 0 {
                    let user = sys::getuid();
                    let lim = sys::rlimit_memlock();
                    if lim != libc::RLIM_INFINITY && !creds.capable(CAP_IPC_LOCK) {
                        let already: u64 = (0..=g.hdr().max_idx.max(-1))
                            .map(|i| g.slot(i as usize))
                            .filter(|o| o.state == SLOT_USED && o.mode & SHM_LOCKED != 0 && o.lock_uid == user)
                            .map(|o| o.pages)
                            .sum();
                        if already + s.pages > lim / PAGE as u64 {
                            return Err(Errno(libc::ENOMEM)); // S108
                        }
                    }
                    s.mode |= SHM_LOCKED; // S106
                    s.lock_uid = user;
                }
            } else {
                s.mode &= !SHM_LOCKED;
            }
            Ok((0, None))
        }
        _ => einval(),
    }
}
