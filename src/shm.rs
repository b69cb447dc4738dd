//! The four SysV calls as a program makes them: [`shmget`], [`do_shmat`],
//! [`shmdt`] and [`shmctl`], plus the address-space changes the hooks report
//! ([`vm_changed`], [`vm_remapped`], [`remap_file_pages`]) and the listings. In a
//! private namespace each runs the `lifecycle` steps under the registry lock; in
//! a shared one it asks the server (`client`), which runs the same steps. Errors
//! name the docs/SEMANTICS.md item they implement where there is one.

use crate::client;
use crate::creds::{Creds, CAP_SYS_RAWIO};
use crate::frags::apply_frags;
pub use crate::frags::VmChange;
use crate::process::{self, Attach, Frag, Local, Namespace, LOCAL, PAGE};
use crate::proto::{self, Msg};
use crate::registry::{self, make_id, Registry, Slot, View, F_HUGETLB, F_NORESERVE, LOCK_TIMEOUT, SHM_DEST};
use crate::sys::{self, Errno, SysResult};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::lifecycle::{
    self, book, einval, lookup_checks, newseg_plan, newseg_publish, shmat_begin, shmat_failed, shmctl_locked, take_pooled, GetParams, Holder, SegInfo, Sysctl,
    FILL_WAIT,
};
pub use crate::lifecycle::{
    IPC_CREAT, IPC_EXCL, IPC_INFO, IPC_RMID, IPC_SET, IPC_STAT, SHMLBA, SHM_EXEC, SHM_HUGETLB, SHM_INFO, SHM_LOCK, SHM_NORESERVE, SHM_RDONLY, SHM_REMAP,
    SHM_RND, SHM_STAT, SHM_STAT_ANY, SHM_UNLOCK,
};

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
        let alive = ns.reg.server_alive();
        let found = ns.reg.read(|r| (alive || r.in_use() == 0).then(|| r.find_key(key).map(|slot| lookup_checks(r, &mut Creds::current(), slot, &p))));
        match found {
            Ok(Some(Some(r))) => return r,
            Ok(Some(None)) if flg & IPC_CREAT == 0 => return Err(Errno(libc::ENOENT)), // S32
            _ => {}
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
        let g = ns.reg.lock_bounded()?;
        match g.find_key(key) {
            Some(slot) => return lookup_checks(g.live(), &mut creds, slot, &p),
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
    let before = ns.reg.release_stamp();
    match create(&mut creds) {
        Err(e @ Errno(libc::ENOMEM | libc::ENOSPC)) => {
            // Deaths the server has not applied yet may free ids and pages: apply
            // them (and let their memory go), then, if a segment went or memory was
            // released meanwhile, try once more (S37, S38).
            client::learn_deaths(ns);
            if ns.reg.release_stamp() == before {
                return Err(e);
            }
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
        let mut g = ns.reg.lock_bounded()?;
        if p.key != 0 {
            // Look again: the key may have been created while no lock was held.
            if let Some(slot) = g.find_key(p.key) {
                return lookup_checks(g.live(), creds, slot, p);
            }
        }
        let plan = match newseg_plan(&g, creds, p) {
            Err(Errno(libc::ENOMEM)) if p.flg & SHM_HUGETLB != 0 && !synced && !ns.reg.all_released() => {
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
            // The server sized it (past its RLIMIT_FSIZE it failed the MAKE).
            if sys::fstat(fd.as_raw_fd())?.st_size < plan.file_len as i64 {
                sys::set_size(fd.as_raw_fd(), plan.file_len).map_err(|_| Errno(libc::ENOMEM))?;
            }
            let gen = local.conn.as_ref().map(|c| c.server_gen).unwrap_or(0);
            let (id, idx, serial) = newseg_publish(&mut g, creds, p, &plan, ino, Holder::Server { fd: server_fd, gen })?;
            drop(g);
            let mut named = Msg::new(proto::NAMED);
            (named.a, named.b, named.c) = (server_fd as u32 as u64, serial, idx as u64);
            process::notify(&named);
            let _ = local.cache_fd(idx, serial, ino, fd, None, plan.file_len);
            return Ok(id);
        }
        let gen_ok = local.conn.as_ref().map(|c| c.server_gen) == Some(g.hdr().server_gen.get());
        // A pooled memfd is sized by its first mapping, in the process that maps
        // it: past this process's RLIMIT_FSIZE the server sizes it (MAKE).
        let pooled = if plan.hugetlb || !gen_ok || !sys::may_size(plan.file_len) { None } else { take_pooled(g.reg) };
        {
            if let Some((ino, claim)) = pooled {
                let h = g.hdr();
                let (id, _, _) = newseg_publish(&mut g, creds, p, &plan, ino, Holder::Pool(claim))?;
                // A quarter of the pool gone: wake the server to refill (once, no waiting).
                let left = h.pool_filled.get().saturating_sub(h.pool_taken.get());
                if left < (registry::POOL_SIZE * 3 / 4) as u64 && h.refill_asked.atomic().swap(1, Ordering::AcqRel) == 0 {
                    process::notify(&Msg::new(proto::REFILL));
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
        process::notify(&Msg::new(proto::REFILL));
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
    let mut creds = Creds::current();
    let mut waited = None;
    let (info, mark) = loop {
        let held = shmat_begin(&mut ns.reg.lock_bounded()?, &mut creds, me, id, acc, pid);
        match held {
            // The segment's only other attacher is zero-filling it (populate_read,
            // a few milliseconds): it may begin once that is done, as bounded as a
            // wait for the lock.
            Err(Errno(FILL_WAIT)) if waited.get_or_insert_with(Instant::now).elapsed() < LOCK_TIMEOUT => std::thread::sleep(Duration::from_micros(100)),
            Err(Errno(FILL_WAIT)) => return Err(Errno(libc::ENOMEM)),
            other => break other?,
        }
    };
    let res = segment_fd(&mut local, ns, &info, flg & SHM_RDONLY != 0).and_then(|(fd, _keep)| map_segment(fd, &info, addr, fixed, flg, prot));
    if res.is_err() {
        match ns.reg.lock_bounded() {
            Ok(mut g) => shmat_failed(&mut g, me, info.slot, info.serial, mark, pid),
            // The hold goes with the next booking (atime and lpid stay as set).
            Err(_) => local.unbooked.push((info.slot, info.serial, 0, 1)),
        }
    }
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
    // The segment's memfd, sized: its tag says both (see process::fd_tag), else
    // its status does (the memfd is sized here if it has no size yet).
    let is_seg = |f: &OwnedFd| {
        if process::has_tag(f.as_raw_fd(), info.ino) {
            return Some(None);
        }
        sys::fstat(f.as_raw_fd()).ok().filter(|st| st.st_ino == info.ino && process::sized(f.as_raw_fd(), st, info.file_len)).map(Some)
    };
    let from_proc = info.server_fd.and_then(|n| local.conn.as_ref()?.server_fd(n)).and_then(|fd| Some((is_seg(&fd)?, fd)));
    let (st, fd) = match from_proc {
        Some(found) => found,
        None => {
            let fd = client::get_fd(local, ns, info.slot, info.serial, rdonly).map_err(|e| if e.0 == libc::EACCES { e } else { Errno(libc::EIDRM) })?;
            let Some(st) = is_seg(&fd) else { return Err(Errno(libc::EIDRM)) };
            if rdonly {
                return Ok((fd.as_raw_fd(), Some(fd)));
            }
            (st, fd)
        }
    };
    if let Some(fd) = local.cache_fd(info.slot, info.serial, info.ino, fd, st, info.file_len) {
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
    let Ok(mut g) = ns.reg.lock_bounded() else {
        // A holder of the lock that does not let go (stopped): booked later.
        local.unbooked.extend(deltas);
        return;
    };
    for (slot, serial, opens, closes) in local.unbooked.drain(..).chain(deltas) {
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

/// MADV_POPULATE_READ over a writable part of one attach whose pages do not
/// exist yet. A SysV mapping faults each page in on its own; a memfd mapping's
/// read faults also try to map the neighbouring pages already in the file
/// ("fault-around"), which on fresh memory finds nothing and makes populating a
/// third slower than the kernel's. Two ways around it, both allocating the same
/// pages and mapping them with the same access:
/// - when this thread is the only one that can write the segment (see
///   [`zero_fill`]), the holes are written with zeros (pages up to date), so the
///   read faults map them sixteen at a time: faster than the kernel's own populate;
/// - otherwise the holes are allocated with fallocate (which never touches a page
///   that exists) and populated for writing (no fault-around; fallocate's pages
///   are dirty already), at the kernel's cost.
///
/// Pages that exist are left to the plain call (fault-around maps them sixteen at
/// a time), and so are small ranges. None: the caller makes the plain call, which
/// also reports every error as the kernel does.
pub fn populate_read(addr: usize, len: usize) -> Option<()> {
    // Below sixteen pages (one fault-around window) the plain call is as fast.
    if !addr.is_multiple_of(PAGE) || len < 16 * PAGE {
        return None;
    }
    let ns = process::namespace_if_open()?;
    let end = addr.checked_add(len.div_ceil(PAGE) * PAGE)?;
    let quiet = sys::block_signals();
    let mut local = LOCAL.lock();
    let a = local.attaches.iter().find(|a| a.frags.iter().any(|f| f.addr <= addr && addr < f.end()))?;
    let (slot, serial) = (a.slot, a.serial);
    let s = ns.reg.slot(slot);
    if s.serial.get() != serial || s.flags.get() & crate::registry::F_HUGETLB != 0 {
        return None; // hugetlb mappings do not fault around
    }
    // The file ranges behind [addr, end): contiguous writable fragments only.
    let mut ranges = Vec::new();
    let mut at = addr;
    for f in &a.frags {
        if f.end() <= at {
            continue;
        }
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        if f.addr > at || f.flags & rw != rw {
            return None;
        }
        let e = f.end().min(end);
        ranges.push((f.pgoff + (at - f.addr), e - at));
        at = e;
        if at == end {
            break;
        }
    }
    if at != end {
        return None;
    }
    let (fd, st) = local.cached_rw(serial, s.ino.get(), 0)?;
    // A file with no block allocated has no page anywhere; otherwise mincore says
    // whether this range has one.
    if st.st_blocks != 0 && sys::any_resident(addr, end - addr)? {
        return None;
    }
    // The allocation may take long: other threads' calls (and signals) are not held
    // up meanwhile, and a descriptor of our own stays valid whatever they close.
    let fd = sys::dup_at_least(fd, 200).ok()?;
    let fill = zero_fill(&mut local, ns, slot, serial, &ranges);
    drop(local);
    if let Some(k) = fill {
        // Signals stay blocked: a handler could write a page the zeros are about
        // to cover. Only holes are written (checked again now that no other
        // attach can begin), and not beyond the end of the file.
        // An attach that comes meanwhile waits at most one chunk: the rest is
        // left to the kernel's populate (the plain call).
        const CHUNK: u64 = 2 << 20;
        let size = st.st_size as u64;
        let mut done = sys::any_resident(addr, end - addr) == Some(false);
        'fill: for &(off, n) in &ranges {
            let (mut at, e) = (off as u64, (off as u64 + n as u64).min(size));
            while at < e && done {
                if ns.reg.fill_wanted(k, serial) {
                    done = false;
                    break 'fill;
                }
                let step = (e - at).min(CHUNK);
                done = sys::pwrite_zeros(fd.as_raw_fd(), at, step).is_ok();
                at += step;
            }
        }
        ns.reg.fill_end(k, serial);
        drop(quiet);
        return (done && sys::madvise(addr, end - addr, libc::MADV_POPULATE_READ)).then_some(());
    }
    drop(quiet);
    for (off, n) in ranges {
        sys::fallocate(fd.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off as u64, n as u64).ok()?;
    }
    sys::madvise(addr, end - addr, libc::MADV_POPULATE_WRITE).then_some(())
}

/// Claims the zero-fill of `ranges` of segment (slot, serial) for this thread
/// (`populate_read`), when nothing else can write the segment meanwhile:
/// - this process has one thread (and the caller keeps signals blocked);
/// - a private namespace (its participants keep the registry), and every attach
///   of the segment is one of this process's, all of them booked;
/// - no other attach may begin until the fill ends (`FillEntry`, checked by
///   `shmat_hold` under the lock this claim is made under); one that tries makes
///   the fill stop at its next 2 MiB;
/// - the writes stay within RLIMIT_FSIZE (beyond it they would raise SIGXFSZ).
///
/// Returns the fill entry to end.
fn zero_fill(local: &mut Local, ns: &Namespace, slot: usize, serial: u64, ranges: &[(usize, usize)]) -> Option<usize> {
    if !ns.reg.writable || local.unbooked.iter().any(|u| u.1 == serial) {
        return None;
    }
    let top = ranges.iter().map(|&(off, n)| (off + n) as u64).max()?;
    if !sys::may_write(top) || !sys::single_threaded() {
        return None;
    }
    let (me, _) = client::ensure_conn(local, ns).ok()?;
    let ours: u64 = local.attaches.iter().filter(|a| a.serial == serial).map(|a| a.frags.len() as u64).sum();
    let mut g = ns.reg.lock_bounded().ok()?;
    let s = g.reg.slot(slot);
    if !s.is_used() || s.serial.get() != serial || s.nattch.get() != ours || g.filling(serial) {
        return None;
    }
    g.fill_begin(serial, me)
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
fn resident_pages(reg: &Registry, s: &Slot, local: Option<&Local>, server_fds: &ServerFds) -> u64 {
    if s.atime.get() == 0 {
        return 0; // never attached: no page was ever touched
    }
    let serial = s.serial.get();
    if let Some(st) = local.and_then(|l| l.fds.get(&serial)).and_then(|c| sys::fstat(c.rw).ok()).filter(|st| st.st_ino == s.ino.get()) {
        return st.st_blocks as u64 * 512 / PAGE as u64;
    }
    let h = reg.header();
    match s.server_fd_of(h.server_gen.get(), serial).and_then(|fd| server_fds.stat(h.server_pid.get(), fd)) {
        Some(st) if st.st_ino == s.ino.get() => st.st_blocks as u64 * 512 / PAGE as u64,
        _ => 0,
    }
}

/// The server's /proc/PID/fd directory, opened at its first use by one call
/// (SHM_INFO, a listing) and closed with it: one open per call, then one fstatat
/// per segment instead of a path lookup each.
#[derive(Default)]
struct ServerFds(std::cell::OnceCell<Option<OwnedFd>>);

impl ServerFds {
    fn stat(&self, spid: i32, fd: i32) -> Option<libc::stat> {
        if spid <= 0 {
            return None;
        }
        let dir = self.0.get_or_init(|| sys::open(&sys::cstr(std::path::Path::new(&format!("/proc/{spid}/fd"))), libc::O_RDONLY | libc::O_DIRECTORY, 0).ok());
        sys::fstatat_number(dir.as_ref()?.as_raw_fd(), fd).ok()
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
    let ns = process::namespace()?;
    // (Without a system call when this process is synced: deaths are applied
    // as `client::synced` describes.)
    client::sync(ns)?;
    // The commands that only read use what the registry publishes, without the
    // lock (whoever holds it meanwhile). SHM_INFO's resident pages come from the
    // memfds, which a shared namespace's client cannot see: its server answers.
    let stat = matches!(cmd, IPC_STAT | SHM_STAT | SHM_STAT_ANY | IPC_INFO) || (cmd == SHM_INFO && ns.reg.writable);
    if stat {
        // SHM_INFO allocates (the server's fd directory's path) and takes the
        // process lock: signals are blocked for it as for the changing commands.
        let _quiet = (cmd == SHM_INFO).then(sys::block_signals);
        let local = (cmd == SHM_INFO).then(|| LOCAL.lock());
        let server_fds = ServerFds::default();
        let rss = |s: &Slot| resident_pages(&ns.reg, s, local.as_deref(), &server_fds);
        if let Ok(r) = ns.reg.read(|r| lifecycle::shmctl_read(r, &mut Creds::current(), id, cmd, &rss)) {
            let (ret, out) = r?;
            if let Some((bytes, len)) = out {
                sys::copy_to_user(buf, &bytes[..len])?;
            }
            return Ok(ret);
        }
    }
    // Reading commands allocate nothing; the others may (descriptor sweeps).
    let reads = matches!(cmd, IPC_STAT | SHM_STAT | SHM_STAT_ANY | IPC_INFO);
    let _quiet = (!reads).then(sys::block_signals);
    let (ret, out) = if ns.reg.writable {
        // LOCAL first (lock order), so that descriptors of segments this call
        // destroys are dropped before it returns.
        let mut local = LOCAL.lock();
        let mut g = ns.reg.lock_bounded()?;
        let server_fds = ServerFds::default();
        let r = shmctl_locked(&mut g, &mut Creds::current(), id, cmd, &setbuf, &|s| resident_pages(&ns.reg, s, Some(&local), &server_fds));
        drop(g);
        if !reads {
            // Outside the registry lock: closing the last descriptor of a big
            // segment frees its pages, which takes a while.
            local.sweep_fds(&ns.reg);
        }
        r?
    } else if stat {
        // A shared namespace's client reads the registry it maps; `read` gave up
        // (a second of continuous updates).
        return Err(Errno(libc::ENOMEM));
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

// ----------------------------------------------------------------- sysctls

/// What /proc/sys/kernel/`which` reads in this namespace.
pub fn sysctl_read(which: Sysctl) -> SysResult<String> {
    let ns = process::namespace()?;
    client::sync(ns)?;
    ns.reg.read(|r| which.read(r)).map_err(|_| Errno(libc::EAGAIN))
}

/// Whether this process may open /proc/sys/kernel/`which` for writing.
pub fn sysctl_may_write(which: Sysctl) -> bool {
    lifecycle::sysctl_may_write(&mut Creds::current(), which)
}

/// A write of `text` to /proc/sys/kernel/`which`: EINVAL for what the kernel
/// refuses, else the namespace's value changes with the kernel's effects.
pub fn sysctl_write(which: Sysctl, text: &[u8]) -> SysResult<()> {
    let v = which.parse(text)?;
    let ns = process::namespace()?;
    client::sync(ns)?;
    if !ns.reg.is_shared() {
        let _local = LOCAL.lock();
        let mut g = ns.reg.lock_bounded()?;
        lifecycle::sysctl_write(&mut g, which, v);
        return Ok(());
    }
    let mut m = Msg::new(proto::SYSCTL);
    (m.a, m.b) = (which.code() as u64, v as u64);
    let mut local = LOCAL.lock();
    client::request(&mut local, ns, &m, &[]).map_err(client::unavailable).map(|_| ())
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
    let server_fds = ServerFds::default();
    let snapshot = |v: View| {
        (0..=v.max_idx().max(-1))
            .map(|i| i as usize)
            .filter(|&i| v.slot(i).is_used())
            .map(|i| {
                let s = v.slot(i);
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
                    rss_pages: resident_pages(v.registry(), s, local.as_deref(), &server_fds),
                }
            })
            .collect::<Vec<_>>()
    };
    match reg.lock_if_writable() {
        Some(g) => snapshot(g.live()),
        None => reg.read(snapshot).unwrap_or_default(),
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
