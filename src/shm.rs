//! The SysV shm semantics, one function per lifecycle step as in Linux `ipc/shm.c`:
//! [`newseg_plan`]/[`newseg_publish`] (newseg), [`lookup_checks`], [`shmat_hold`] and
//! [`shmat_done`] (do_shmat), [`shm_open_frags`]/[`shm_close_frags`] (shm_open,
//! shm_close), [`shm_destroy`], [`detach_proc`] (exit_shm), and `shmctl` split per
//! command. These steps take the registry guard and the acting process's
//! credentials, so the same code runs in a participant of a private namespace and
//! in the server of a shared one, on a client's behalf.
//!
//! The calls themselves ([`shmget`], [`do_shmat`], [`shmdt`], [`shmctl`],
//! [`vm_changed`], [`vm_remapped`]) run the steps under the lock in a private
//! namespace, or ask the server in a shared one. Every error names the item of
//! docs/SEMANTICS.md it implements.

use crate::client;
use crate::creds::{Creds, CAP_IPC_LOCK, CAP_SYS_ADMIN, CAP_SYS_RAWIO};
use crate::frags::apply_frags;
pub use crate::frags::VmChange;
use crate::process::{self, Attach, Frag, Local, Namespace, LOCAL, PAGE};
use crate::proto::{self, Msg};
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

/// Segments at least this big are released by an immediate message to the server.
const BIG_SEGMENT: u64 = 1 << 20;

/// MAX_LFS_FILESIZE (S40).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

fn einval<T>() -> SysResult<T> {
    Err(Errno(libc::EINVAL))
}

// ----------------------------------------------------------------- lifecycle steps

/// shm_may_destroy + shm_destroy: a SHM_DEST segment goes when nattch reaches 0 (S75).
pub fn maybe_destroy(g: &mut RegGuard, slot: usize) {
    let s = g.slot(slot);
    if s.is_used() && s.nattch.get() == 0 && s.mode.get() & SHM_DEST != 0 {
        shm_destroy(g, slot);
    }
}

/// Removes a segment: its id becomes invalid and its slot and pages return to the
/// shmmni/shmall budget (S75, S93). Whoever holds its memory drops it.
pub fn shm_destroy(g: &mut RegGuard, slot: usize) {
    let s = g.reg.slot(slot);
    let key = s.key.get();
    if key != 0 && s.mode.get() & SHM_DEST == 0 {
        g.index_remove(key, slot);
    }
    let serial = s.serial.get();
    s.state.set(SLOT_FREE); // primary: from here on the segment is gone
    s.server_fd.set(0);
    let h = g.hdr();
    h.in_use.sub(1);
    h.shm_tot.sub(s.pages.get());
    g.recompute_max_idx();
    g.record_destroyed(serial);
    if s.map_len.get() >= BIG_SEGMENT || s.flags.get() & F_HUGETLB != 0 {
        // Its memory is worth a wake-up of the server, which closes the memfd at
        // once (it also notices every destruction by itself within milliseconds).
        client::wake_server();
    }
}

/// exit_shm: detaches everything proc entry `p` had attached, as its exit would
/// (S120), destroys SHM_DEST segments it held last (S123), and frees the entry.
pub fn detach_proc(g: &mut RegGuard, p: usize, now: i64) {
    for s in g.reap_proc(p, now) {
        maybe_destroy(g, s);
    }
}

/// Applies the death of the process registered as (entry, gen), unless that entry
/// has moved on to another process. True if it was applied now.
pub fn apply_death(g: &mut RegGuard, entry: usize, gen: u32) -> bool {
    let e = g.proc_entry(entry);
    if entry >= g.proc_hwm() || e.pid.get() == 0 || e.gen.get() != gen {
        return false;
    }
    detach_proc(g, entry, sys::now());
    true
}

pub struct GetParams {
    pub key: i32,
    pub size: usize,
    pub flg: i32,
}

/// The lookup path's checks, in the kernel's order (S44).
pub fn lookup_checks(g: &Registry, creds: &mut Creds, slot: usize, p: &GetParams) -> SysResult<i32> {
    if p.flg & IPC_CREAT != 0 && p.flg & IPC_EXCL != 0 {
        return Err(Errno(libc::EEXIST)); // S34
    }
    let s = g.slot(slot);
    if (s.segsz.get() as usize) < p.size {
        return einval(); // S30
    }
    if !creds.ipcperms(s, p.flg) {
        return Err(Errno(libc::EACCES)); // S36, S117
    }
    Ok(make_id(s.seq.get(), slot as u32))
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
    let rd =
        |f: &str| sys::read_small(&format!("/sys/kernel/mm/hugepages/hugepages-{}kB/{f}", size / 1024)).and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    rd("free_hugepages").saturating_sub(rd("resv_hugepages"))
}

fn in_hugetlb_group(creds: &mut Creds) -> bool {
    sys::read_small("/proc/sys/vm/hugetlb_shm_group").and_then(|s| s.trim().parse::<u32>().ok()).map(|gid| creds.in_group(gid)).unwrap_or(false)
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
        meminfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0) * 1024
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

/// What newseg decided before it needs memory: sizes and the memfd to make.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub numpages: u64,
    pub map_len: usize,
    /// memfd_create flags (MFD_HUGETLB and its size code for SHM_HUGETLB).
    pub mfd_flags: u32,
    pub file_len: u64,
    pub hugetlb: bool,
    pub noreserve: bool,
}

/// newseg's checks, in the kernel's order (S43), up to where memory is needed.
pub fn newseg_plan(g: &Registry, creds: &mut Creds, p: &GetParams) -> SysResult<Plan> {
    let h = g.header();
    let size = p.size;
    // S33: below SHMMIN or above shmmax.
    if size < 1 || size as u64 > h.shmmax.get() {
        return einval();
    }
    // S39: page rounding overflows.
    let numpages = (size.wrapping_add(PAGE - 1) / PAGE) as u64;
    if numpages.wrapping_mul(PAGE as u64) < size as u64 {
        return Err(Errno(libc::ENOSPC));
    }
    // S38: shmall.
    if h.shm_tot.get().checked_add(numpages).map(|t| t > h.shmall.get()).unwrap_or(true) {
        return Err(Errno(libc::ENOSPC));
    }
    let hugetlb = p.flg & SHM_HUGETLB != 0;
    let noreserve = p.flg & SHM_NORESERVE != 0;
    let mut map_len = numpages as usize * PAGE;
    let mut mfd_flags = libc::MFD_CLOEXEC;
    let mut file_len = size as u64;
    if hugetlb {
        let hsize = hugepage_size(p.flg)?; // S45: EINVAL first
        if !creds.capable(CAP_IPC_LOCK) && !in_hugetlb_group(creds) {
            return Err(Errno(libc::EPERM)); // S45
        }
        map_len = size.checked_add(hsize - 1).ok_or(Errno(libc::ENOSPC))? / hsize * hsize;
        if !noreserve && hugetlb_free_pages(hsize) < (map_len / hsize) as u64 {
            return Err(Errno(libc::ENOMEM)); // S46
        }
        mfd_flags |= libc::MFD_HUGETLB | ((hsize.trailing_zeros() & 0x3f) << 26);
        // A hugetlb file is sized in whole huge pages, at most MAX_LFS_FILESIZE.
        file_len = (map_len as u64).min(MAX_LFS_FILESIZE & !(hsize as u64 - 1));
    } else {
        // S40/S41: shmem_kernel_file_setup refuses sizes above MAX_LFS_FILESIZE,
        // then accounts the memory unless SHM_NORESERVE.
        if size as u64 > MAX_LFS_FILESIZE {
            return einval();
        }
        commit_check(size as u64, noreserve)?;
    }
    Ok(Plan { numpages, map_len, mfd_flags, file_len, hugetlb, noreserve })
}

/// Who holds a new segment's memory, so that it outlives its creator (S127).
pub enum Holder<'a> {
    /// A memfd of the server's pool, claimed by the creator.
    Pool(PoolClaim<'a>),
    /// A memfd the server made on request (or, in the server, its own): the
    /// server's descriptor number and generation.
    Server { fd: i32, gen: u64 },
}

/// newseg's second half: the shmmni check (ipc_addid, S37) and publication. The
/// memory is held by the server before the segment becomes visible.
pub fn newseg_publish(g: &mut RegGuard, creds: &mut Creds, p: &GetParams, plan: &Plan, ino: u64, holder: Holder) -> SysResult<(i32, usize, u64)> {
    let h = g.hdr();
    let limit = h.shmmni.get().min(MAX_SLOTS as u64);
    if h.in_use.get() as u64 >= limit {
        return Err(Errno(libc::ENOSPC));
    }
    // Room for this segment's attaches: a full filesystem fails the create, never
    // a later shmat of a segment reported created.
    g.reserve_headroom()?;
    let (idx, seq) = g.alloc_idx()?;
    let serial = h.next_serial.get();
    let s = g.slot(idx);
    match holder {
        Holder::Pool(claim) => {
            s.set_server_fd(h.server_gen.get(), serial, claim.fd);
            claim.commit(serial);
            h.pool_taken.atomic().fetch_add(1, Ordering::AcqRel);
        }
        Holder::Server { fd, gen } => s.set_server_fd(gen, serial, fd),
    }
    h.next_serial.set(serial + 1);
    s.flags.set(if plan.hugetlb { F_HUGETLB } else { 0 } | if plan.noreserve { F_NORESERVE } else { 0 });
    s.key.set(p.key);
    s.mode.set((p.flg & 0o777) as u32); // S23, S26
    s.uid.set(creds.euid); // S116
    s.cuid.set(creds.euid);
    s.gid.set(creds.egid);
    s.cgid.set(creds.egid);
    s.seq.set(seq);
    s.cpid.set(creds.pid());
    s.lpid.set(0);
    s.lock_uid.set(0);
    s.segsz.set(p.size as u64); // S25
    s.atime.set(0);
    s.dtime.set(0);
    s.ctime.set(sys::now());
    s.nattch.set(0);
    s.serial.set(serial);
    s.map_len.set(plan.map_len as u64);
    s.pages.set(plan.numpages);
    s.ino.set(ino);
    s.rec_head.set(registry::NIL);
    s.state.set(SLOT_USED); // primary: visible from here on
    h.in_use.add(1);
    h.shm_tot.add(plan.numpages);
    h.max_idx.set(h.max_idx.get().max(idx as i32));
    if p.key != 0 {
        g.index_insert(p.key, idx);
    }
    Ok((make_id(seq, idx as u32), idx, serial))
}

/// Everything shmat needs from a slot, copied under the lock.
#[derive(Clone, Copy, Debug)]
pub struct SegInfo {
    pub slot: usize,
    pub serial: u64,
    pub ino: u64,
    pub map_len: usize,
    pub segsz: usize,
    pub noreserve: bool,
    /// The server's descriptor number for this incarnation, if published.
    pub server_fd: Option<i32>,
    /// The size the memfd must have (a pooled one is created empty and sized by
    /// its first mapping); 0 for one sized at creation (huge pages).
    pub file_len: u64,
}

/// do_shmat's lookup, permission check and temporary hold on nattch (the kernel's
/// shm_nattch++ before mapping), so IPC_RMID meanwhile only defers.
pub fn shmat_hold(g: &mut RegGuard, creds: &mut Creds, me: usize, id: i32, acc: i32) -> SysResult<SegInfo> {
    let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?; // S13, S14
    let s = g.slot(slot);
    if !creds.ipcperms(s, acc) {
        return Err(Errno(libc::EACCES)); // S67
    }
    g.rec_add(me, slot, 1).map_err(|_| Errno(libc::ENOMEM))?;
    let gen = g.hdr().server_gen.get();
    Ok(SegInfo {
        slot,
        serial: s.serial.get(),
        ino: s.ino.get(),
        map_len: s.map_len.get() as usize,
        segsz: s.segsz.get() as usize,
        noreserve: s.flags.get() & F_NORESERVE != 0,
        server_fd: s.server_fd_of(gen, s.serial.get()),
        file_len: if s.flags.get() & F_HUGETLB != 0 { 0 } else { s.segsz.get() },
    })
}

/// do_shmat's end: the mapping exists (S51: atime, lpid) or failed (the hold goes,
/// and a SHM_DEST segment may go with it; S64: nattch unchanged on failure).
pub fn shmat_done(g: &mut RegGuard, me: usize, slot: usize, serial: u64, ok: bool, pid: i32) {
    let s = g.slot(slot);
    if !s.is_used() || s.serial.get() != serial {
        return;
    }
    if ok {
        s.atime.set(sys::now());
        s.lpid.set(pid);
    } else {
        g.rec_sub(me, slot, 1);
        maybe_destroy(g, slot);
    }
}

/// shm_open for `n` new VMAs of one attach (splits, mremap copies, fork).
pub fn shm_open_frags(g: &mut RegGuard, me: usize, slot: usize, serial: u64, n: u32, pid: i32) {
    let s = g.slot(slot);
    if n == 0 || !s.is_used() || s.serial.get() != serial {
        return;
    }
    let _ = g.rec_add(me, slot, n);
    s.atime.set(sys::now());
    s.lpid.set(pid);
}

/// shm_close for `n` VMAs of one attach: nattch, dtime, lpid (S69, S73), and
/// destruction of a SHM_DEST segment at its last detach (S75).
pub fn shm_close_frags(g: &mut RegGuard, me: usize, slot: usize, serial: u64, n: u32, pid: i32) {
    let s = g.slot(slot);
    if n == 0 || !s.is_used() || s.serial.get() != serial {
        return;
    }
    g.rec_sub(me, slot, n);
    s.dtime.set(sys::now());
    s.lpid.set(pid);
    maybe_destroy(g, slot);
}

/// Books VMA changes in the kernel's order: the splits' opens, then the closes.
pub fn book(g: &mut RegGuard, me: usize, slot: usize, serial: u64, opens: u32, closes: u32, pid: i32) {
    shm_open_frags(g, me, slot, serial, opens, pid);
    shm_close_frags(g, me, slot, serial, closes, pid);
}

// ----------------------------------------------------------------- shmctl commands

/// shmctl's copy-out: up to a struct shmid_ds of bytes, and how many.
pub type CopyOut = ([u8; 112], usize);

/// Builds the x86_64 `struct shmid_ds` (112 bytes, S142/S143).
pub fn shmid_ds_bytes(s: &Slot) -> [u8; 112] {
    let mut b = [0u8; 112];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0, &s.key.get().to_ne_bytes());
    put(4, &s.uid.get().to_ne_bytes());
    put(8, &s.gid.get().to_ne_bytes());
    put(12, &s.cuid.get().to_ne_bytes());
    put(16, &s.cgid.get().to_ne_bytes());
    put(20, &s.mode.get().to_ne_bytes());
    put(24, &(s.seq.get() as u16).to_ne_bytes());
    put(48, &s.segsz.get().to_ne_bytes());
    put(56, &s.atime.get().to_ne_bytes());
    put(64, &s.dtime.get().to_ne_bytes());
    put(72, &s.ctime.get().to_ne_bytes());
    put(80, &s.cpid.get().to_ne_bytes());
    put(84, &s.lpid.get().to_ne_bytes());
    put(88, &s.nattch.get().to_ne_bytes());
    b
}

/// A shorter struct (shminfo, shm_info) in shmctl's copy-out buffer.
fn padded(b: &[u8]) -> CopyOut {
    let mut out = [0u8; 112];
    out[..b.len()].copy_from_slice(b);
    (out, b.len())
}

/// ipc_get_maxidx (S99): -1 when empty, reported as 0.
fn max_idx_ret(g: &Registry) -> i32 {
    let h = g.header();
    if h.in_use.get() == 0 {
        0
    } else if h.in_use.get() as usize == MAX_SLOTS {
        MAX_SLOTS as i32 - 1
    } else {
        h.max_idx.get().max(0)
    }
}

/// IPC_INFO (S100).
fn shmctl_ipc_info(g: &Registry) -> (i32, Option<CopyOut>) {
    let h = g.header();
    let mut b = [0u8; 72];
    let vals = [h.shmmax.get(), 1, h.shmmni.get(), h.shmmni.get(), h.shmall.get()];
    for (i, v) in vals.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    (max_idx_ret(g), Some(padded(&b)))
}

/// SHM_INFO (S101); `rss` gives a segment's resident pages.
fn shmctl_shm_info(g: &Registry, rss: &dyn Fn(&Slot) -> u64) -> (i32, Option<CopyOut>) {
    let h = g.header();
    let total: u64 = (0..=(h.max_idx.get().max(-1))).map(|i| g.slot(i as usize)).filter(|s| s.is_used()).map(rss).sum();
    let mut b = [0u8; 48];
    b[0..4].copy_from_slice(&(h.in_use.get() as i32).to_ne_bytes());
    b[8..16].copy_from_slice(&h.shm_tot.get().to_ne_bytes());
    b[16..24].copy_from_slice(&total.to_ne_bytes());
    (max_idx_ret(g), Some(padded(&b)))
}

/// IPC_STAT, SHM_STAT, SHM_STAT_ANY (S82–S84, S102–S104).
fn shmctl_stat(g: &Registry, creds: &mut Creds, id: i32, cmd: i32) -> SysResult<(i32, Option<CopyOut>)> {
    let slot = if cmd == IPC_STAT {
        g.slot_of_id(id).ok_or(Errno(libc::EINVAL))? // S13
    } else {
        let idx = id_idx(id); // S102: only the low 15 bits
        if !g.slot(idx).is_used() {
            return einval(); // S103
        }
        idx
    };
    let s = g.slot(slot);
    if cmd != SHM_STAT_ANY && !creds.ipcperms(s, 0o444) {
        return Err(Errno(libc::EACCES)); // S82, S104
    }
    let bytes = shmid_ds_bytes(s);
    let ret = if cmd == IPC_STAT { 0 } else { make_id(s.seq.get(), slot as u32) };
    Ok((ret, Some((bytes, bytes.len()))))
}

/// IPC_SET (S87–S91).
fn shmctl_set(g: &mut RegGuard, creds: &mut Creds, id: i32, setbuf: &[u8; 112]) -> SysResult<(i32, Option<CopyOut>)> {
    let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?;
    let s = g.slot(slot);
    if !creds.is_owner(s) && !creds.capable(CAP_SYS_ADMIN) {
        return Err(Errno(libc::EPERM)); // S88
    }
    let word = |o: usize| u32::from_ne_bytes(setbuf[o..o + 4].try_into().unwrap());
    let (uid, gid, mode) = (word(4), word(8), word(20));
    if uid == u32::MAX || gid == u32::MAX {
        return einval(); // S89
    }
    s.uid.set(uid);
    s.gid.set(gid);
    s.mode.set((s.mode.get() & !0o777) | (mode & 0o777)); // S87, S91
    s.ctime.set(sys::now());
    Ok((0, None))
}

/// IPC_RMID: do_shm_rmid (S92–S97).
fn shmctl_rmid(g: &mut RegGuard, creds: &mut Creds, id: i32) -> SysResult<(i32, Option<CopyOut>)> {
    let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?;
    let s = g.slot(slot);
    if !creds.is_owner(s) && !creds.capable(CAP_SYS_ADMIN) {
        return Err(Errno(libc::EPERM)); // S92
    }
    if s.nattch.get() > 0 {
        let key = s.key.get();
        if key != 0 && s.mode.get() & SHM_DEST == 0 {
            g.index_remove(key, slot);
        }
        s.mode.set(s.mode.get() | SHM_DEST);
        s.key.set(0); // S94
    } else {
        shm_destroy(g, slot);
    }
    Ok((0, None))
}

/// SHM_LOCK, SHM_UNLOCK (S105–S111).
fn shmctl_lock(g: &mut RegGuard, creds: &mut Creds, id: i32, cmd: i32) -> SysResult<(i32, Option<CopyOut>)> {
    let slot = g.slot_of_id(id).ok_or(Errno(libc::EINVAL))?; // S111
    let s = g.slot(slot);
    if !creds.capable(CAP_IPC_LOCK) {
        if !creds.is_owner(s) {
            return Err(Errno(libc::EPERM)); // S107
        }
        if cmd == SHM_LOCK && creds.memlock() == 0 {
            return Err(Errno(libc::EPERM)); // S108
        }
    }
    if s.flags.get() & F_HUGETLB != 0 {
        return Ok((0, None)); // S110
    }
    if cmd == SHM_UNLOCK {
        s.mode.set(s.mode.get() & !SHM_LOCKED);
        return Ok((0, None));
    }
    if s.mode.get() & SHM_LOCKED == 0 {
        let user = creds.uid();
        let lim = creds.memlock();
        if lim != libc::RLIM_INFINITY && !creds.capable(CAP_IPC_LOCK) {
            let already: u64 = (0..=g.hdr().max_idx.get().max(-1))
                .map(|i| g.slot(i as usize))
                .filter(|o| o.is_used() && o.mode.get() & SHM_LOCKED != 0 && o.lock_uid.get() == user)
                .map(|o| o.pages.get())
                .sum();
            if already + s.pages.get() > lim / PAGE as u64 {
                return Err(Errno(libc::ENOMEM)); // S108
            }
        }
        s.mode.set(s.mode.get() | SHM_LOCKED); // S106
        s.lock_uid.set(user);
    }
    Ok((0, None))
}

/// shmctl's work under the lock, dispatched per command; returns the result and
/// the bytes to copy out (copied after the lock is released, as the kernel does).
pub fn shmctl_locked(
    g: &mut RegGuard,
    creds: &mut Creds,
    id: i32,
    cmd: i32,
    setbuf: &[u8; 112],
    rss: &dyn Fn(&Slot) -> u64,
) -> SysResult<(i32, Option<CopyOut>)> {
    match cmd {
        IPC_INFO => Ok(shmctl_ipc_info(g)),
        SHM_INFO => Ok(shmctl_shm_info(g, rss)),
        IPC_STAT | SHM_STAT | SHM_STAT_ANY => shmctl_stat(g, creds, id, cmd),
        IPC_SET => shmctl_set(g, creds, id, setbuf),
        IPC_RMID => shmctl_rmid(g, creds, id),
        SHM_LOCK | SHM_UNLOCK => shmctl_lock(g, creds, id, cmd),
        _ => einval(), // S78
    }
}

// ----------------------------------------------------------------- pool claims

/// A memfd claimed from the server's pool; put back unless `commit`ted.
pub struct PoolClaim<'a> {
    entry: &'a registry::PoolEntry,
    fd: i32,
    done: bool,
}

impl PoolClaim<'_> {
    /// The segment `serial` keeps it: the server files it under that serial.
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

/// Claims a memfd from the server's pool: (inode, claim). Lock-free with respect
/// to the server (see `registry::PoolEntry`). The creator takes no descriptor:
/// a pooled memfd is empty, and its first mapping gives it the segment's size
/// (`cached_fd`), so creating and removing a segment costs no system call.
fn take_pooled(reg: &Registry) -> Option<(u64, PoolClaim<'_>)> {
    let hdr = reg.header();
    // Creators take entries in turn: start where the last one left off.
    let start = hdr.pool_taken.get() as usize;
    for i in 0..registry::POOL_SIZE {
        let e = &hdr.pool[(start + i) % registry::POOL_SIZE];
        let fd = e.fd.load(Ordering::Acquire);
        if fd <= 0 || e.taken.load(Ordering::Acquire) != 0 {
            continue;
        }
        if e.fd.compare_exchange(fd, -fd, Ordering::AcqRel, Ordering::Acquire).is_err() {
            continue;
        }
        let ino = e.ino.load(Ordering::Acquire);
        return Some((ino, PoolClaim { entry: e, fd, done: false }));
    }
    None
}

// ----------------------------------------------------------------- shmget

/// shmget(2): lookup or creation (S22–S48).
pub fn shmget(key: i32, size: usize, flg: i32) -> SysResult<i32> {
    let ns = process::namespace()?;
    let p = GetParams { key, size, flg };
    let mut creds = Creds::current();
    if key != 0 {
        // Fast path: a lookup reads a consistent snapshot without the lock. Deaths
        // not yet applied change no lookup (a segment they would destroy is
        // removed already, so its key is gone); a dead server would (its segments
        // may have lost their memory), and that is one load to rule out.
        if ns.reg.server_alive() || ns.reg.header().in_use.get() == 0 {
            let found = ns.reg.read(|r| r.find_key(key).map(|slot| lookup_checks(r, &mut Creds::current(), slot, &p)));
            match found {
                Ok(Some(r)) => return r,
                Ok(None) if flg & IPC_CREAT == 0 => return Err(Errno(libc::ENOENT)), // S32
                _ => {}
            }
        }
    }
    client::sync(ns)?;
    if !ns.reg.writable {
        let mut m = Msg::new(proto::SHMGET);
        (m.a, m.b, m.c) = (key as u32 as u64, size as u64, flg as u32 as u64);
        let mut local = LOCAL.lock();
        return client::request(&mut local, ns, &m, &[]).map(|(r, _)| r.a as i32).map_err(client::unavailable);
    }
    if key != 0 {
        let g = ns.reg.lock();
        match g.find_key(key) {
            Some(slot) => return lookup_checks(&g, &mut creds, slot, &p),
            None if flg & IPC_CREAT == 0 => return Err(Errno(libc::ENOENT)), // S32
            None => {}
        }
    }
    let _quiet = sys::block_signals();
    let create = |creds: &mut Creds| {
        let mut local = LOCAL.lock();
        client::ensure_conn(&mut local, ns).map_err(client::unavailable)?;
        creds.set_pid(local.pid); // ensure_conn checked it is ours
        create_local(&mut local, ns, creds, &p)
    };
    match create(&mut creds) {
        Err(Errno(libc::ENOMEM | libc::ENOSPC)) => {
            // Deaths the server has not applied yet may free ids and pages: apply
            // them (and let their memory go), then try once more (S37, S38).
            client::learn_deaths(ns);
            create(&mut creds)
        }
        r => r,
    }
}

/// Creation in a private namespace: a pooled memfd (no message), else one the
/// server makes on request, asked for outside the lock.
fn create_local(local: &mut Local, ns: &Namespace, creds: &mut Creds, p: &GetParams) -> SysResult<i32> {
    let mut made: Option<(OwnedFd, i32, u64)> = None;
    let mut synced = false;
    let mut waited = 0;
    loop {
        local.sweep_fds(&ns.reg);
        let mut g = ns.reg.lock();
        if p.key != 0 {
            // Look again: the key may have been created while no lock was held.
            if let Some(slot) = g.find_key(p.key) {
                return lookup_checks(&g, creds, slot, p);
            }
        }
        let plan = match newseg_plan(&g, creds, p) {
            Err(Errno(libc::ENOMEM)) if p.flg & SHM_HUGETLB != 0 && !synced => {
                // Huge pages held by segments removed a moment ago go when the
                // server closes their memfds: let it, then look again (S46).
                drop(g);
                synced = true;
                client::release_destroyed(local, ns);
                continue;
            }
            r => r?,
        };
        if let Some((fd, server_fd, ino)) = made.take() {
            sys::ftruncate(fd.as_raw_fd(), plan.file_len).map_err(|_| Errno(libc::ENOMEM))?;
            let gen = local.conn.as_ref().map(|c| c.server_gen).unwrap_or(0);
            let (id, idx, serial) = newseg_publish(&mut g, creds, p, &plan, ino, Holder::Server { fd: server_fd, gen })?;
            drop(g);
            let mut named = Msg::new(proto::NAMED);
            (named.a, named.b, named.c) = (server_fd as u32 as u64, serial, idx as u64);
            client::notify(&named);
            let _ = local.cache_fd(idx, serial, ino, fd);
            return Ok(id);
        }
        let gen_ok = local.conn.as_ref().map(|c| c.server_gen) == Some(g.hdr().server_gen.get());
        let pooled = if plan.hugetlb || !gen_ok { None } else { take_pooled(g.reg) };
        {
            if let Some((ino, claim)) = pooled {
                let h = g.hdr();
                let (id, _, _) = newseg_publish(&mut g, creds, p, &plan, ino, Holder::Pool(claim))?;
                // A quarter of the pool gone: wake the server to refill (once, no waiting).
                let left = h.pool_filled.get().saturating_sub(h.pool_taken.get());
                if left < (registry::POOL_SIZE * 3 / 4) as u64 && h.refill_asked.atomic().swap(1, Ordering::AcqRel) == 0 {
                    client::notify(&Msg::new(proto::REFILL));
                }
                return Ok(id);
            }
        }
        drop(g);
        if !plan.hugetlb && gen_ok && waited < POOL_WAIT_ROUNDS && pool_refilling(ns) {
            // The server is refilling the pool on another CPU: a memfd appears
            // within microseconds, sooner than a MAKE round trip would bring one.
            waited += 1;
            continue;
        }
        made = Some(client::make_memfd(local, ns, plan.mfd_flags, plan.file_len).map_err(client::unavailable)?);
    }
}

/// Rounds of `pool_refilling` a creator waits before it asks for a memfd.
const POOL_WAIT_ROUNDS: u32 = 4;

/// Waits up to 50 µs for the server to put a memfd in the pool, yielding the CPU
/// to it meanwhile; true if it did.
fn pool_refilling(ns: &Namespace) -> bool {
    let h = ns.reg.header();
    let before = h.pool_filled.get();
    if h.refill_asked.atomic().swap(1, Ordering::AcqRel) == 0 {
        client::notify(&Msg::new(proto::REFILL));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_micros(50);
    while std::time::Instant::now() < deadline {
        if h.pool_filled.get() != before {
            return true;
        }
        sys::yield_cpu();
    }
    false
}

// ----------------------------------------------------------------- shmat

/// The checks of shmat's arguments that need no segment (S57, S60, S65 order).
fn shmat_args(shmaddr: usize, flg: i32) -> SysResult<(usize, i32, i32)> {
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
    let (mut prot, mut acc) = if flg & SHM_RDONLY != 0 { (libc::PROT_READ, 0o444) } else { (libc::PROT_READ | libc::PROT_WRITE, 0o666) };
    if flg & SHM_EXEC != 0 {
        prot |= libc::PROT_EXEC; // S54
        acc |= 0o111;
    }
    Ok((addr, prot, acc))
}

/// shmat(2) (S49–S67), checks in the order of S65.
pub fn do_shmat(id: i32, shmaddr: usize, flg: i32) -> SysResult<usize> {
    if id < 0 {
        return einval(); // S15
    }
    let (addr, prot, acc) = shmat_args(shmaddr, flg)?;
    let fixed = shmaddr != 0;
    let _quiet = sys::block_signals();
    let ns = process::namespace()?;
    client::sync(ns)?;
    let mut local = LOCAL.lock();
    let (me, _) = client::ensure_conn(&mut local, ns).map_err(client::unavailable)?;
    let pid = local.pid; // ensure_conn checked it is ours
    if !ns.reg.writable {
        return shmat_remote(&mut local, ns, id, addr, fixed, flg, prot, acc);
    }
    local.sweep_fds(&ns.reg);
    let info = shmat_hold(&mut ns.reg.lock(), &mut Creds::current(), me, id, acc)?;
    let res = segment_fd(&mut local, ns, &info, flg & SHM_RDONLY != 0).and_then(|(fd, _keep)| map_segment(fd, &info, addr, fixed, flg, prot));
    shmat_done(&mut ns.reg.lock(), me, info.slot, info.serial, res.is_ok(), pid);
    let at = res?;
    attached(&mut local, ns, &info, at, flg, prot);
    Ok(at)
}

/// Records a new attach in this process and books, for SHM_REMAP, the attaches it
/// replaced (S59: whatever was mapped there is gone, attaches included).
fn attached(local: &mut Local, ns: &Namespace, info: &SegInfo, at: usize, flg: i32, prot: i32) {
    if flg & SHM_REMAP != 0 {
        let deltas = apply_local(local, at, info.map_len, VmChange::Unmap);
        book_local(local, ns, deltas);
    }
    local.attaches.push(Attach {
        slot: info.slot,
        serial: info.serial,
        map_len: info.map_len,
        frags: vec![Frag { addr: at, len: info.map_len, pgoff: 0, flags: prot as u32 }],
    });
    local.publish_count();
}

/// shmat in a shared namespace: the server decides and counts, hands a descriptor
/// with exactly the access granted; this process maps it.
#[allow(clippy::too_many_arguments)]
fn shmat_remote(local: &mut Local, ns: &Namespace, id: i32, addr: usize, fixed: bool, flg: i32, prot: i32, acc: i32) -> SysResult<usize> {
    let mut m = Msg::new(proto::SHMAT);
    (m.a, m.b, m.c) = (id as u32 as u64, acc as u64, flg as u32 as u64);
    let (r, mut fds) = client::request(local, ns, &m, &[]).map_err(client::unavailable)?;
    let info = SegInfo {
        slot: r.a as usize,
        serial: r.b,
        ino: r.c,
        map_len: r.d as usize,
        segsz: (r.e & !(1 << 63)) as usize,
        noreserve: r.e >> 63 != 0,
        server_fd: None,
        file_len: 0,
    };
    let fd = fds.pop();
    let res = match &fd {
        Some(fd) if sys::fstat(fd.as_raw_fd()).map(|st| st.st_ino == info.ino).unwrap_or(false) => map_segment(fd.as_raw_fd(), &info, addr, fixed, flg, prot),
        _ => Err(Errno(libc::EIDRM)),
    };
    let mut done = Msg::new(proto::SHMAT_DONE);
    (done.a, done.b, done.c) = (info.slot as u64, info.serial, res.is_ok() as u64);
    let _ = client::request(local, ns, &done, &[]);
    let at = res?;
    attached(local, ns, &info, at, flg, prot);
    Ok(at)
}

/// Maps a segment's descriptor: overlap → EINVAL unless SHM_REMAP (S58, S59), wrap
/// → EINVAL, beyond user space → ENOMEM (S63).
fn map_segment(fd: i32, info: &SegInfo, addr: usize, fixed: bool, flg: i32, prot: i32) -> SysResult<usize> {
    if fixed && flg & SHM_REMAP == 0 && addr.checked_add(info.segsz).is_none() {
        return einval(); // S63
    }
    let mut flags = libc::MAP_SHARED;
    if info.noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    if fixed {
        if addr == 0 && !Creds::current().capable(CAP_SYS_RAWIO) {
            // S61: a SHM_RND address that rounds to 0 attaches at 0, which needs
            // CAP_SYS_RAWIO (vm.mmap_min_addr).
            return Err(Errno(libc::EACCES));
        }
        flags |= if flg & SHM_REMAP != 0 { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    }
    // SAFETY: without SHM_REMAP the map never replaces anything
    // (MAP_FIXED_NOREPLACE or no fixed address); with SHM_REMAP replacing the
    // caller's range is exactly what the caller asked for (S59).
    match unsafe { sys::mmap(addr, info.map_len, prot, flags, fd, 0) } {
        Ok(at) if fixed && at != addr => {
            // A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
            // SAFETY: we just made this mapping; nothing refers to it.
            let _ = unsafe { sys::munmap(at, info.map_len) };
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

/// A descriptor for the segment: the process cache, the server's /proc entry (same
/// uid), or the server's SCM_RIGHTS reply (after a uid change). Each is checked to
/// be the segment's inode; none means it was destroyed meanwhile (S16). A
/// read-only descriptor from the server is used once (returned as owned), never
/// cached as if it could map for writing.
fn segment_fd(local: &mut Local, ns: &Namespace, info: &SegInfo, rdonly: bool) -> SysResult<(i32, Option<OwnedFd>)> {
    if let Some(fd) = local.cached_fd(info.serial, info.ino, info.file_len, rdonly) {
        return Ok((fd, None));
    }
    let is_seg = |f: &OwnedFd| sys::fstat(f.as_raw_fd()).map(|st| st.st_ino == info.ino && process::sized(f.as_raw_fd(), &st, info.file_len)).unwrap_or(false);
    let from_proc = info.server_fd.and_then(|n| local.conn.as_ref()?.server_fd(n)).filter(is_seg);
    let fd = match from_proc {
        Some(fd) => fd,
        None => {
            let fd = client::get_fd(local, ns, info.slot, info.serial, rdonly).map_err(|e| if e.0 == libc::EACCES { e } else { Errno(libc::EIDRM) })?;
            if !is_seg(&fd) {
                return Err(Errno(libc::EIDRM));
            }
            if rdonly {
                return Ok((fd.as_raw_fd(), Some(fd)));
            }
            fd
        }
    };
    if let Some(fd) = local.cache_fd(info.slot, info.serial, info.ino, fd) {
        // No room to keep it: this attach uses it once.
        if rdonly {
            let ro = process::reopen(fd.as_raw_fd(), libc::O_RDONLY | libc::O_CLOEXEC)?;
            return Ok((ro.as_raw_fd(), Some(ro)));
        }
        return Ok((fd.as_raw_fd(), Some(fd)));
    }
    local.cached_fd(info.serial, info.ino, info.file_len, rdonly).map(|fd| (fd, None)).ok_or(Errno(libc::ENOMEM))
}

// ----------------------------------------------------------------- shmdt / munmap

/// shmdt(2) (S69–S76): finds the first fragment at or above `addr` whose distance
/// from `addr` equals its offset in the segment, then removes every fragment of
/// that same attach lying within the segment size from `addr` (S71).
pub fn shmdt(addr: usize) -> SysResult<()> {
    if addr & (PAGE - 1) != 0 {
        return einval(); // S70
    }
    let Some(ns) = process::namespace_if_open() else { return einval() };
    let _quiet = sys::block_signals();
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
            // SAFETY: the fragment is the program's attach, which shmdt removes by
            // definition; the shim keeps no reference into it.
            let _ = unsafe { sys::munmap(f.addr, f.len) };
            removed += 1;
        }
        !take
    });
    let (slot, serial) = (a.slot, a.serial);
    if a.frags.is_empty() {
        local.attaches.swap_remove(ai);
    }
    local.publish_count();
    book_local(&mut local, ns, vec![(slot, serial, 0, removed)]);
    // A removed segment's descriptor is not kept once we no longer map it: its
    // memory goes with its last detach, not with our next call.
    let s = ns.reg.slot(slot);
    if s.mode.get() & SHM_DEST != 0 && s.serial.get() == serial && !local.attaches.iter().any(|a| a.serial == serial) {
        local.fds.remove(&serial);
    }
    Ok(())
}

/// Books VMA changes of this process: under the lock (private namespace) or by
/// the server (shared).
fn book_local(local: &mut Local, ns: &Namespace, deltas: Vec<(usize, u64, u32, u32)>) {
    if deltas.is_empty() {
        return;
    }
    if !ns.reg.writable {
        return vm_remote(local, ns, deltas);
    }
    let Ok((me, _)) = client::ensure_conn(local, ns) else { return };
    let pid = local.pid; // ensure_conn checked it is ours
    let mut g = ns.reg.lock();
    for (slot, serial, opens, closes) in deltas {
        book(&mut g, me, slot, serial, opens, closes, pid);
    }
    drop(g);
    local.sweep_fds(&ns.reg); // a destroyed segment's memory goes now
}

fn vm_remote(local: &mut Local, ns: &Namespace, deltas: Vec<(usize, u64, u32, u32)>) {
    for (slot, serial, opens, closes) in deltas {
        let mut m = Msg::new(proto::VM);
        (m.a, m.b, m.c, m.d) = (slot as u64, serial, opens as u64, closes as u64);
        let _ = client::request(local, ns, &m, &[]);
    }
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

/// Runs a munmap/mprotect/madvise/MAP_FIXED mmap (`op`, which returns the address
/// it affected) and follows its effect on `[addr, addr+len)` — both under this
/// process's lock, so no shmat or other memory call of another thread can land
/// between the system call and its bookkeeping.
pub fn vm_changed(addr: usize, len: usize, change: VmChange, op: impl FnOnce() -> SysResult<usize>) -> SysResult<usize> {
    let Some(ns) = process::namespace_if_open() else { return op() };
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let at = op()?;
    let addr = if addr == 0 { at } else { addr };
    let deltas = apply_local(&mut local, addr, len, change);
    book_local(&mut local, ns, deltas);
    Ok(at)
}

/// Runs an mremap (`op`, returning the new address) of `[old, old+old_len)` and
/// follows it under this process's lock: the piece keeps its segment offset, so
/// shmdt(new address) works and shmdt(old) fails (S74).
pub fn vm_remapped(old: usize, old_len: usize, new_len: usize, op: impl FnOnce() -> SysResult<usize>) -> SysResult<usize> {
    let Some(ns) = process::namespace_if_open() else { return op() };
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let new = op()?;
    let moved = local
        .attaches
        .iter()
        .find_map(|a| a.frags.iter().find(|f| old >= f.addr && old < f.addr + f.len).map(|f| (a.slot, a.serial, a.map_len, f.pgoff + (old - f.addr), f.flags)));
    let Some((slot, serial, map_len, pgoff, flags)) = moved else { return Ok(new) };
    // The kernel copies the VMA first (shm_open on the copy), then unmaps the old
    // one (shm_close): in that order a removed segment's last attach survives
    // being moved. With old_len 0 the old mapping stays (a duplicate).
    let mut deltas = vec![(slot, serial, 1, 0)];
    if old_len > 0 {
        deltas.extend(apply_local(&mut local, old, old_len, VmChange::Unmap));
    }
    let frag = Frag { addr: new, len: new_len.div_ceil(PAGE) * PAGE, pgoff, flags };
    match local.attaches.iter_mut().find(|a| a.serial == serial) {
        Some(a) => {
            a.frags.push(frag);
            a.frags.sort_by_key(|f| f.addr);
        }
        None => local.attaches.push(Attach { slot, serial, map_len, frags: vec![frag] }),
    }
    local.publish_count();
    book_local(&mut local, ns, deltas);
    Ok(new)
}

/// remap_file_pages(2) over an attach (S73): Linux emulates it with a new mapping
/// of the segment over the range, and that mapping's open looks the segment up
/// again after the old range is closed. So over the last attach of a removed
/// segment the call destroys it and fails with EINVAL, leaving the range
/// unmapped; otherwise the range is mapped anew at page `pgoff`. Ranges that are
/// not an attach, and arguments the kernel refuses, go to `kernel`.
pub fn remap_file_pages(start: usize, size: usize, prot: i32, pgoff: usize, flags: i32, kernel: impl FnOnce() -> SysResult<()>) -> SysResult<()> {
    let Some(ns) = process::namespace_if_open() else { return kernel() };
    let (start, size) = (start & !(PAGE - 1), size & !(PAGE - 1));
    let _quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let hit = local.attaches.iter().find_map(|a| a.frags.iter().find(|f| f.addr <= start && start < f.end()).map(|f| (a.slot, a.serial, a.map_len, f.clone())));
    let Some((slot, serial, map_len, frag)) = hit else {
        drop(local);
        return kernel();
    };
    let bad = prot != 0 || flags & !libc::MAP_NONBLOCK != 0 || size == 0 || start.checked_add(size).is_none_or(|end| end > frag.end());
    if bad || pgoff.checked_mul(PAGE).is_none_or(|off| off.saturating_add(size) > map_len) {
        drop(local);
        return kernel();
    }
    // The old range goes first (shm_close: it may destroy a removed segment).
    // SAFETY: the range is the program's attach, which this call replaces by
    // definition; the shim keeps no reference into it.
    unsafe { sys::munmap(start, size) }?;
    let deltas = apply_local(&mut local, start, size, VmChange::Unmap);
    book_local(&mut local, ns, deltas);
    let s = ns.reg.slot(slot);
    if !(s.is_used() && s.serial.get() == serial) {
        return einval(); // the segment went with the range (shm_mmap finds no id)
    }
    let info = SegInfo {
        slot,
        serial,
        ino: s.ino.get(),
        map_len,
        segsz: s.segsz.get() as usize,
        noreserve: s.flags.get() & F_NORESERVE != 0,
        server_fd: s.server_fd_of(ns.reg.header().server_gen.get(), serial),
        file_len: if s.flags.get() & F_HUGETLB != 0 { 0 } else { s.segsz.get() },
    };
    let prot = (frag.flags & 7) as i32;
    let (fd, _keep) = segment_fd(&mut local, ns, &info, prot & libc::PROT_WRITE == 0)?;
    let mut mflags = libc::MAP_SHARED | libc::MAP_FIXED;
    if info.noreserve {
        mflags |= libc::MAP_NORESERVE;
    }
    // SAFETY: the range was the program's attach, unmapped just above; mapping
    // the segment there again is what the call asks for.
    unsafe { sys::mmap(start, size, prot, mflags, fd, (pgoff * PAGE) as i64) }?;
    let new = Frag { addr: start, len: size, pgoff: pgoff * PAGE, flags: frag.flags };
    // The new mapping joins a neighbour of the same attach that it continues (the
    // kernel expands that VMA: no VMA is opened, nattch stays); else it is a VMA
    // of its own.
    let opened = match local.attaches.iter_mut().find(|a| a.serial == serial) {
        Some(a) => {
            let joined = join_neighbour(&mut a.frags, &new);
            if !joined {
                a.frags.push(new);
                a.frags.sort_by_key(|f| f.addr);
            }
            rehint(a);
            !joined
        }
        None => {
            local.attaches.push(Attach { slot, serial, map_len, frags: vec![new] });
            true
        }
    };
    local.publish_count();
    if opened {
        book_local(&mut local, ns, vec![(slot, serial, 1, 0)]);
    }
    Ok(())
}

/// Extends the fragment that `new` continues (the one before it, else the one
/// after it: a merge that would join both would delete a VMA, which shm VMAs
/// never allow). True if one did.
fn join_neighbour(frags: &mut [Frag], new: &Frag) -> bool {
    if let Some(prev) = frags.iter_mut().find(|f| f.end() == new.addr && f.pgoff + f.len == new.pgoff && f.flags == new.flags) {
        prev.len += new.len;
        return true;
    }
    if let Some(next) = frags.iter_mut().find(|f| f.addr == new.end() && new.pgoff + new.len == f.pgoff && f.flags == new.flags) {
        next.addr = new.addr;
        next.pgoff = new.pgoff;
        next.len += new.len;
        return true;
    }
    false
}

// ----------------------------------------------------------------- shmctl

/// Resident pages of a segment (SHM_INFO shm_rss): the memfd's allocated blocks,
/// through our cached descriptor or the server's.
fn resident_pages(reg: &Registry, s: &Slot, local: Option<&Local>) -> u64 {
    let serial = s.serial.get();
    if let Some(st) = local.and_then(|l| l.fds.get(&serial)).and_then(|c| sys::fstat(c.rw).ok()).filter(|st| st.st_ino == s.ino.get()) {
        return st.st_blocks as u64 * 512 / PAGE as u64;
    }
    let h = reg.header();
    let spid = h.server_pid.get();
    if let (true, Some(fd)) = (spid > 0, s.server_fd_of(h.server_gen.get(), serial)) {
        if let Ok(md) = std::fs::metadata(format!("/proc/{spid}/fd/{fd}")) {
            use std::os::unix::fs::MetadataExt;
            if md.ino() == s.ino.get() {
                return md.blocks() * 512 / PAGE as u64;
            }
        }
    }
    0
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
    let ns = process::namespace()?;
    if matches!(cmd, IPC_STAT | SHM_STAT | SHM_STAT_ANY) && client::synced(ns) {
        // Fast path: a snapshot without the lock and without a system call
        // (deaths are applied as `client::synced` describes).
        if let Ok(r) = ns.reg.read(|r| shmctl_stat(r, &mut Creds::current(), id, cmd)) {
            let (ret, out) = r?;
            if let Some((bytes, len)) = out {
                sys::copy_to_user(buf, &bytes[..len])?;
            }
            return Ok(ret);
        }
    }
    client::sync(ns)?;
    // Reading commands allocate nothing; the others may (descriptor sweeps).
    let reads = matches!(cmd, IPC_STAT | SHM_STAT | SHM_STAT_ANY | IPC_INFO);
    let _quiet = (!reads).then(sys::block_signals);
    let (ret, out) = if ns.reg.writable {
        // LOCAL first (lock order), so that descriptors of segments this call
        // destroys are dropped before it returns.
        let mut local = LOCAL.lock();
        let mut g = ns.reg.lock();
        let r = shmctl_locked(&mut g, &mut Creds::current(), id, cmd, &setbuf, &|s| resident_pages(&ns.reg, s, Some(&local)));
        drop(g);
        if !reads {
            // Outside the registry lock: closing the last descriptor of a big
            // segment frees its pages, which takes a while.
            local.sweep_fds(&ns.reg);
        }
        r?
    } else if reads && cmd != IPC_INFO {
        // A shared namespace's client reads the registry it maps, once the server
        // has applied every death the kernel reported (sync above).
        ns.reg.read(|r| shmctl_stat(r, &mut Creds::current(), id, cmd)).map_err(|_| Errno(libc::ENOMEM))??
    } else {
        let mut m = Msg::new(proto::SHMCTL);
        (m.a, m.b) = (id as u32 as u64, cmd as u32 as u64);
        m.data = setbuf;
        let mut local = LOCAL.lock();
        let (r, _) = client::request(&mut local, ns, &m, &[]).map_err(client::unavailable)?;
        (r.a as i32, (r.c > 0).then_some((r.data, (r.c as usize).min(112))))
    };
    if let Some((bytes, len)) = out {
        sys::copy_to_user(buf, &bytes[..len])?;
    }
    Ok(ret)
}

// ----------------------------------------------------------------- listings

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

/// Every segment in index order (for `shmshim ls`, /proc/sysvipc/shm).
pub fn list_segments(ns: &Namespace) -> Vec<SegStat> {
    let _quiet = sys::block_signals();
    let _ = client::sync(ns);
    let local = LOCAL.try_lock();
    let reg = &ns.reg;
    let snapshot = |reg: &Registry| {
        (0..=reg.header().max_idx.get().max(-1))
            .map(|i| i as usize)
            .filter(|&i| reg.slot(i).is_used())
            .map(|i| {
                let s = reg.slot(i);
                SegStat {
                    id: make_id(s.seq.get(), i as u32),
                    key: s.key.get(),
                    uid: s.uid.get(),
                    gid: s.gid.get(),
                    cuid: s.cuid.get(),
                    cgid: s.cgid.get(),
                    mode: s.mode.get(),
                    segsz: s.segsz.get(),
                    atime: s.atime.get(),
                    dtime: s.dtime.get(),
                    ctime: s.ctime.get(),
                    cpid: s.cpid.get(),
                    lpid: s.lpid.get(),
                    nattch: s.nattch.get(),
                    rss_pages: resident_pages(reg, s, local.as_deref()),
                }
            })
            .collect::<Vec<_>>()
    };
    if reg.writable {
        let g = reg.lock();
        snapshot(&g)
    } else {
        reg.read(snapshot).unwrap_or_default()
    }
}

/// The namespace as /proc/sysvipc/shm shows it on 64-bit kernels (S138–S140).
pub fn sysvipc_text(ns: &Namespace) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n",
    );
    for s in list_segments(ns) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn s142_shmid_ds_layout_matches_libc() {
        assert_eq!(size_of::<libc::shmid_ds>(), 112);
        assert_eq!(offset_of!(libc::shmid_ds, shm_segsz), 48);
        assert_eq!(offset_of!(libc::shmid_ds, shm_atime), 56);
        assert_eq!(offset_of!(libc::shmid_ds, shm_dtime), 64);
        assert_eq!(offset_of!(libc::shmid_ds, shm_ctime), 72);
        assert_eq!(offset_of!(libc::shmid_ds, shm_cpid), 80);
        assert_eq!(offset_of!(libc::shmid_ds, shm_lpid), 84);
        assert_eq!(offset_of!(libc::shmid_ds, shm_nattch), 88);
        assert_eq!(offset_of!(libc::ipc_perm, __key), 0);
        assert_eq!(offset_of!(libc::ipc_perm, uid), 4);
        assert_eq!(offset_of!(libc::ipc_perm, mode), 20);
        assert_eq!(offset_of!(libc::ipc_perm, __seq), 24);
    }

    #[test]
    fn s84_ipc_stat_bytes_read_back_as_struct_shmid_ds() {
        let s = Slot::default();
        s.key.set(0x1234);
        s.uid.set(1000);
        s.gid.set(100);
        s.cuid.set(1001);
        s.cgid.set(101);
        s.mode.set(0o640 | SHM_DEST);
        s.seq.set(3);
        s.segsz.set(4097);
        s.atime.set(11);
        s.dtime.set(12);
        s.ctime.set(13);
        s.cpid.set(77);
        s.lpid.set(78);
        s.nattch.set(2);
        let b = shmid_ds_bytes(&s);
        // SAFETY: b holds 112 initialised bytes, the size of struct shmid_ds (checked
        // above), which is plain old data; read_unaligned needs no alignment.
        let ds: libc::shmid_ds = unsafe { std::ptr::read_unaligned(b.as_ptr() as *const libc::shmid_ds) };
        assert_eq!((ds.shm_perm.__key, ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.cuid, ds.shm_perm.cgid), (0x1234, 1000, 100, 1001, 101));
        assert_eq!((ds.shm_perm.mode, ds.shm_perm.__seq), ((0o640 | SHM_DEST) as u16 as _, 3));
        assert_eq!((ds.shm_segsz, ds.shm_atime, ds.shm_dtime, ds.shm_ctime), (4097, 11, 12, 13));
        assert_eq!((ds.shm_cpid, ds.shm_lpid, ds.shm_nattch), (77, 78, 2));
    }
}
