//! The SysV shm semantics over the locked registry, one function per lifecycle
//! step as in Linux `ipc/shm.c`: [`newseg_plan`]/[`newseg_publish`] (newseg),
//! [`lookup_checks`], [`shmat_begin`] and [`shmat_failed`] (do_shmat; the
//! server's attaches for shared-namespace clients: [`shmat_hold`], [`shmat_done`]),
//! [`shm_open_frags`]/[`shm_close_frags`] (shm_open, shm_close), [`shm_destroy`],
//! [`detach_proc`] and [`apply_death`] (exit_shm), and [`shmctl_locked`]
//! dispatching to one function per command. Each step takes the registry guard
//! and the acting process's credentials, so the same code runs in a participant
//! of a private namespace and in the server of a shared one, on a client's behalf.
//! Nothing here makes a system call on a segment or talks to the server (a big or
//! huge-page segment's destruction only asks the caller's next descriptor sweep to
//! see its memory released, `process::release_soon`): that is `shm` (the calls) and
//! `client` (the connection), both
//! above this layer. Errors name the docs/SEMANTICS.md item they implement where
//! there is one.

use crate::creds::{Creds, CAP_IPC_LOCK, CAP_SYS_ADMIN};
pub use crate::frags::VmChange;
use crate::process::{self, PAGE};
use crate::registry::{self, id_idx, make_id, RegGuard, Registry, Slot, View, F_HUGETLB, F_NORESERVE, MAX_SLOTS, SHM_DEST, SHM_LOCKED, SLOT_FREE, SLOT_USED};
use crate::sys::{self, Errno, SysResult};
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

/// Internal only, never returned to a program: the segment is being zero-filled
/// by its only attacher (`shm::populate_read`); the caller waits and tries again.
pub const FILL_WAIT: i32 = libc::EINPROGRESS;

/// Segments at least this big are released by an immediate message to the server.
const BIG_SEGMENT: u64 = 1 << 20;

/// MAX_LFS_FILESIZE (S40).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

pub(crate) fn einval<T>() -> SysResult<T> {
    Err(Errno(libc::EINVAL))
}

// ----------------------------------------------------------------- lifecycle steps

/// shm_may_destroy: unattached, and removed (SHM_DEST, S75) or under
/// shm_rmid_forced (S131).
fn may_destroy(g: &RegGuard, slot: usize) -> bool {
    let s = g.reg.slot(slot);
    s.is_used() && s.nattch.get() == 0 && (s.mode.get() & SHM_DEST != 0 || g.hdr().rmid_forced.get() != 0)
}

/// shm_may_destroy + shm_destroy, after a detach.
pub fn maybe_destroy(g: &mut RegGuard, slot: usize) {
    if may_destroy(g, slot) {
        shm_destroy(g, slot);
    }
}

/// Removes a segment: its id becomes invalid and its slot and pages return to the
/// shmmni/shmall budget (S75, S93). Whoever holds its memory drops it.
pub fn shm_destroy(g: &mut RegGuard, slot: usize) {
    let s = g.slot(slot);
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
    // A segment never attached (atime still 0) never had a page: no wait has
    // anything to wait for, and nothing is worth a wake-up.
    let attached = s.atime.get() != 0;
    g.record_destroyed(serial, !attached);
    if attached && (s.map_len.get() >= BIG_SEGMENT || s.flags.get() & F_HUGETLB != 0) {
        // Its memory is worth a wake-up of the server, which closes the memfd at
        // once, unless the caller's descriptor sweep empties it first (the server
        // also notices every destruction by itself within milliseconds).
        process::release_soon();
    }
}

/// exit_shm: detaches everything proc entry `p` had attached, as its exit would
/// (S120), destroys SHM_DEST segments it held last (S123), and frees the entry.
/// If the process has ended (not an exec, which keeps it the creator, nor a
/// dropped connection), the segments it created become orphans, or go at once
/// under shm_rmid_forced when unattached (S130).
pub fn detach_proc(g: &mut RegGuard, p: usize, now: i64) {
    let e = g.proc_entry(p);
    let (pid, start) = (e.pid.get(), e.start.get());
    for s in g.reap_proc(p, now) {
        maybe_destroy(g, s);
    }
    let created: Vec<usize> = (0..g.slot_hwm()).filter(|&i| g.reg.slot(i).is_used() && g.reg.slot(i).creator.get() == pid).collect();
    if created.is_empty() || process::runs(pid, start) {
        return;
    }
    for i in created {
        if may_destroy(g, i) {
            shm_destroy(g, i);
        } else {
            g.slot(i).creator.set(0);
        }
    }
}

/// shm_destroy_orphaned: after shm_rmid_forced is set, every unattached segment
/// whose creator has exited goes (S132).
pub fn destroy_orphans(g: &mut RegGuard) {
    for i in 0..g.slot_hwm() {
        if g.reg.slot(i).is_used() && g.reg.slot(i).creator.get() == 0 && may_destroy(g, i) {
            shm_destroy(g, i);
        }
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
pub fn lookup_checks(g: View, creds: &mut Creds, slot: usize, p: &GetParams) -> SysResult<i32> {
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
/// The huge page sizes (hstates) and the default one are fixed at boot, so they
/// are learnt once per process.
fn hugepage_size(flg: i32) -> SysResult<usize> {
    use std::sync::atomic::AtomicU64;
    // Bit k: 1 << k is a huge page size this kernel has; 0: not read yet.
    static SIZES: AtomicU64 = AtomicU64::new(0);
    static DEFAULT: AtomicU64 = AtomicU64::new(0);
    if SIZES.load(Ordering::Acquire) == 0 {
        let mut sizes = 1u64; // bit 0 marks "read"
        for e in std::fs::read_dir("/sys/kernel/mm/hugepages").into_iter().flatten().flatten() {
            let name = e.file_name();
            let kb = name.to_str().and_then(|n| n.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse::<u64>().ok());
            if let Some(kb) = kb.filter(|kb| kb.is_power_of_two()) {
                sizes |= 1u64.checked_shl((kb * 1024).trailing_zeros()).unwrap_or(0);
            }
        }
        let default = sys::read_small("/proc/meminfo")
            .and_then(|m| m.lines().find(|l| l.starts_with("Hugepagesize:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .map(|kb| kb * 1024)
            .unwrap_or(2 << 20);
        DEFAULT.store(default, Ordering::Release);
        SIZES.store(sizes, Ordering::Release);
    }
    let code = (flg as u32 >> 26) & 0x3f;
    let size = if code == 0 { DEFAULT.load(Ordering::Acquire) as usize } else { 1usize.checked_shl(code).ok_or(Errno(libc::EINVAL))? };
    // Supported sizes are the hstates the kernel has.
    if size.is_power_of_two() && size > 1 && SIZES.load(Ordering::Acquire) >> size.trailing_zeros() & 1 == 1 {
        Ok(size)
    } else {
        einval() // S45: unknown size code
    }
}

/// Whether `need` huge pages of `size` are free and unreserved (resv_hugepages is
/// read only when free_hugepages alone would do).
fn hugetlb_pages_free(size: usize, need: u64) -> bool {
    let rd =
        |f: &str| sys::read_small(&format!("/sys/kernel/mm/hugepages/hugepages-{}kB/{f}", size / 1024)).and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let free = rd("free_hugepages");
    free >= need && free.saturating_sub(rd("resv_hugepages")) >= need
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
        if !noreserve && !hugetlb_pages_free(hsize, (map_len / hsize) as u64) {
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
    // An id written to shm_next_id is taken (and forgotten) here (S19).
    let next = h.next_id.get();
    let (idx, seq) = if next >= 0 {
        h.next_id.set(-1);
        g.alloc_idx_at(registry::id_idx(next), registry::id_seq(next))?
    } else {
        g.alloc_idx()?
    };
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
    s.creator.set(creds.pid());
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
    if g.filling(s.serial.get()) {
        return Err(Errno(FILL_WAIT));
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

/// What `shmat_begin` replaced and wrote, for `shmat_failed` to put back.
#[derive(Clone, Copy, Debug)]
pub struct AttachMark {
    atime: i64,
    lpid: i32,
    /// The atime written (with this process's pid as lpid).
    set: i64,
}

/// `shmat_hold` and, ahead of the mapping, what shm_open records when it exists
/// (S51: atime, lpid), so that an attach that maps takes the lock once.
pub fn shmat_begin(g: &mut RegGuard, creds: &mut Creds, me: usize, id: i32, acc: i32, pid: i32) -> SysResult<(SegInfo, AttachMark)> {
    let info = shmat_hold(g, creds, me, id, acc)?;
    let s = g.slot(info.slot);
    let mark = AttachMark { atime: s.atime.get(), lpid: s.lpid.get(), set: sys::now() };
    s.atime.set(mark.set);
    s.lpid.set(pid);
    Ok((info, mark))
}

/// An attach begun by `shmat_begin` whose mapping failed: the hold goes (and a
/// SHM_DEST segment may go with it; S64: nattch unchanged), and atime and lpid
/// are put back unless another attach has written them since.
pub fn shmat_failed(g: &mut RegGuard, me: usize, slot: usize, serial: u64, mark: AttachMark, pid: i32) {
    let s = g.slot(slot);
    if !s.is_used() || s.serial.get() != serial {
        return;
    }
    if s.lpid.get() == pid && s.atime.get() == mark.set {
        s.atime.set(mark.atime);
        s.lpid.set(mark.lpid);
    }
    g.rec_sub(me, slot, 1);
    maybe_destroy(g, slot);
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
fn max_idx_ret(g: View) -> i32 {
    if g.in_use() == 0 {
        0
    } else if g.in_use() as usize == MAX_SLOTS {
        MAX_SLOTS as i32 - 1
    } else {
        g.max_idx().max(0)
    }
}

/// IPC_INFO (S100).
fn shmctl_ipc_info(g: View) -> (i32, Option<CopyOut>) {
    let mut b = [0u8; 72];
    let vals = [g.shmmax(), 1, g.shmmni(), g.shmmni(), g.shmall()];
    for (i, v) in vals.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    (max_idx_ret(g), Some(padded(&b)))
}

/// SHM_INFO (S101); `rss` gives a segment's resident pages.
fn shmctl_shm_info(g: View, rss: &dyn Fn(&Slot) -> u64) -> (i32, Option<CopyOut>) {
    let total: u64 = (0..=(g.max_idx().max(-1))).map(|i| g.slot(i as usize)).filter(|s| s.is_used()).map(rss).sum();
    let mut b = [0u8; 48];
    b[0..4].copy_from_slice(&(g.in_use() as i32).to_ne_bytes());
    b[8..16].copy_from_slice(&g.shm_tot().to_ne_bytes());
    b[16..24].copy_from_slice(&total.to_ne_bytes());
    (max_idx_ret(g), Some(padded(&b)))
}

/// IPC_STAT, SHM_STAT, SHM_STAT_ANY (S82–S84, S102–S104).
pub(crate) fn shmctl_stat(g: View, creds: &mut Creds, id: i32, cmd: i32) -> SysResult<(i32, Option<CopyOut>)> {
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

/// SHM_LOCK, SHM_UNLOCK (S106–S111).
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
                .map(|i| g.reg.slot(i as usize))
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
        IPC_INFO | SHM_INFO | IPC_STAT | SHM_STAT | SHM_STAT_ANY => shmctl_read(g.live(), creds, id, cmd, rss),
        IPC_SET => shmctl_set(g, creds, id, setbuf),
        IPC_RMID => shmctl_rmid(g, creds, id),
        SHM_LOCK | SHM_UNLOCK => shmctl_lock(g, creds, id, cmd),
        _ => einval(), // S78
    }
}

/// The commands that only read (IPC_INFO, SHM_INFO and the stat commands), on a
/// view: the published copy, without the lock, or the live tables under it.
pub fn shmctl_read(g: View, creds: &mut Creds, id: i32, cmd: i32, rss: &dyn Fn(&Slot) -> u64) -> SysResult<(i32, Option<CopyOut>)> {
    match cmd {
        IPC_INFO => Ok(shmctl_ipc_info(g)),
        SHM_INFO => Ok(shmctl_shm_info(g, rss)),
        IPC_STAT | SHM_STAT | SHM_STAT_ANY => shmctl_stat(g, creds, id, cmd),
        _ => einval(), // S78
    }
}

// ----------------------------------------------------------------- sysctls

/// The IPC sysctls of /proc/sys/kernel that shm has (S133–S135, S19, S128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sysctl {
    ShmMax,
    ShmAll,
    ShmMni,
    RmidForced,
    NextId,
}

impl Sysctl {
    pub const ALL: [Sysctl; 5] = [Sysctl::ShmMax, Sysctl::ShmAll, Sysctl::ShmMni, Sysctl::RmidForced, Sysctl::NextId];

    /// The file's name under /proc/sys/kernel.
    pub fn name(self) -> &'static str {
        match self {
            Sysctl::ShmMax => "shmmax",
            Sysctl::ShmAll => "shmall",
            Sysctl::ShmMni => "shmmni",
            Sysctl::RmidForced => "shm_rmid_forced",
            Sysctl::NextId => "shm_next_id",
        }
    }

    pub fn from_name(n: &[u8]) -> Option<Sysctl> {
        Sysctl::ALL.into_iter().find(|s| s.name().as_bytes() == n)
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(c: u32) -> Option<Sysctl> {
        Sysctl::ALL.get(c as usize).copied()
    }

    /// Whether writing it needs CAP_CHECKPOINT_RESTORE (shm_next_id, mode 0444)
    /// rather than the root ownership of a 0644 file.
    pub fn checkpoint_only(self) -> bool {
        self == Sysctl::NextId
    }

    /// Parses a write as the kernel's proc_doulongvec_minmax / proc_dointvec_minmax
    /// do for a one-value table: blanks around the number, the first value only,
    /// out of range or malformed is EINVAL.
    pub fn parse(self, text: &[u8]) -> SysResult<i64> {
        let t = text.iter().skip_while(|b| b.is_ascii_whitespace() || **b == 0).copied().collect::<Vec<u8>>();
        let (neg, digits) = match t.first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, &t[..]),
        };
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return einval();
        }
        if let Some(c) = digits.get(n) {
            if !c.is_ascii_whitespace() && *c != 0 {
                return einval();
            }
        }
        let v: u64 = std::str::from_utf8(&digits[..n]).ok().and_then(|d| d.parse().ok()).ok_or(Errno(libc::EINVAL))?;
        match self {
            // unsigned long: no sign, any u64 (kept as its bits)
            Sysctl::ShmMax | Sysctl::ShmAll if neg => einval(),
            Sysctl::ShmMax | Sysctl::ShmAll => Ok(v as i64),
            _ => {
                let v = if neg { -(v.min(1 << 40) as i64) } else { v.min(1 << 40) as i64 };
                let (lo, hi) = match self {
                    Sysctl::ShmMni => (0, MAX_SLOTS as i64),
                    Sysctl::RmidForced => (0, 1),
                    _ => (0, i32::MAX as i64),
                };
                if v < lo || v > hi {
                    return einval();
                }
                Ok(v)
            }
        }
    }

    /// The value as the file reads.
    pub fn read(self, v: View) -> String {
        match self {
            Sysctl::ShmMax => format!("{}\n", v.shmmax()),
            Sysctl::ShmAll => format!("{}\n", v.shmall()),
            Sysctl::ShmMni => format!("{}\n", v.shmmni()),
            Sysctl::RmidForced => format!("{}\n", v.rmid_forced()),
            Sysctl::NextId => format!("{}\n", v.next_id()),
        }
    }
}

/// Whether `creds` may open the sysctl for writing: the files are root's, 0644
/// (shm_next_id 0444: writable with CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN).
pub fn sysctl_may_write(creds: &mut Creds, which: Sysctl) -> bool {
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    creds.euid == 0 || which.checkpoint_only() && (creds.capable(CAP_CHECKPOINT_RESTORE) || creds.capable(CAP_SYS_ADMIN))
}

/// A write of a parsed value: limits apply from the next call; shm_rmid_forced
/// set to 1 removes the orphans (S132).
pub fn sysctl_write(g: &mut RegGuard, which: Sysctl, v: i64) {
    let h = g.hdr();
    match which {
        Sysctl::ShmMax => h.shmmax.set(v as u64),
        Sysctl::ShmAll => h.shmall.set(v as u64),
        Sysctl::ShmMni => h.shmmni.set(v as u64),
        Sysctl::NextId => h.next_id.set(v as i32),
        Sysctl::RmidForced => {
            h.rmid_forced.set(v as u32);
            if v != 0 {
                destroy_orphans(g);
            }
        }
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
    pub fn commit(mut self, serial: u64) {
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
pub fn take_pooled(reg: &Registry) -> Option<(u64, PoolClaim<'_>)> {
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
