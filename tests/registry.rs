//! Tests of the registry and the lifecycle steps that run on it: id allocation
//! (docs/SEMANTICS.md S7–S12), the key index, attach records and nattch, repair
//! after a crash, refusal of foreign files, and allocation before use. Segments
//! are created and destroyed by the real `lifecycle::newseg_plan`/`newseg_publish` and
//! `lifecycle::shm_destroy`.

use shmshim_core::creds::Creds;
use shmshim_core::lifecycle::{self, GetParams, Holder};
use shmshim_core::registry::*;
use std::path::PathBuf;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shmshim-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LIMITS: Limits = Limits { shmmax: u64::MAX - (1 << 24), shmall: u64::MAX - (1 << 24), shmmni: 4096 };

/// Creates a segment of `pages` pages through newseg; returns its id.
fn create(g: &mut RegGuard, key: i32, pages: u64) -> i32 {
    let p = GetParams { key, size: pages as usize * 4096, flg: 0o1600 };
    let mut creds = Creds::current();
    let plan = lifecycle::newseg_plan(g, &mut creds, &p).expect("plan");
    lifecycle::newseg_publish(g, &mut creds, &p, &plan, 0, Holder::Server { fd: -1, gen: 0 }).expect("publish").0
}

fn remove(g: &mut RegGuard, id: i32) {
    let idx = g.slot_of_id(id).expect("live id");
    lifecycle::shm_destroy(g, idx);
}

#[test]
fn s8_first_ids_are_0_1_2_and_s9_allocation_is_cyclic() {
    let d = tempdir("s8");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    assert_eq!([create(&mut g, 0, 1), create(&mut g, 0, 1), create(&mut g, 0, 1)], [0, 1, 2]);
    remove(&mut g, 0);
    assert_eq!(create(&mut g, 0, 1), 3, "S9: not lowest-free");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn s10_window_and_s11_seq_wrap() {
    let d = tempdir("s10");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let first: Vec<i32> = (0..4).map(|_| create(&mut g, 0, 1)).collect();
    for id in first {
        remove(&mut g, id);
    }
    let mut ids = Vec::new();
    for _ in 0..130 {
        let id = create(&mut g, 0, 1);
        ids.push(id);
        remove(&mut g, id);
    }
    // 4..63, then 32768..32831 (idx 0.., seq 1), then 65536.. (seq 2).
    let expect: Vec<i32> = (4..64).chain(32768..32832).chain(65536..65542).collect();
    assert_eq!(ids, expect);
    // S10: with 100 segments held the window widens past 64.
    let held: Vec<i32> = (0..100).map(|_| create(&mut g, 0, 1)).collect();
    assert!(held.iter().map(|&id| id_idx(id)).max().unwrap() >= 99);
    for id in held {
        remove(&mut g, id);
    }
    // S11: seq wraps from 65534 to 0.
    g.hdr().idr_seq.set(SEQ_MAX - 1);
    // (alloc_idx keeps the slot high-water mark)
    g.hdr().idr_next.set(64);
    let id = create(&mut g, 0, 1);
    assert_eq!(id_seq(id), 0, "seq wraps to 0 after 65534");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn s13_s14_stale_and_wrong_seq_ids_do_not_resolve() {
    let d = tempdir("s13");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let id = create(&mut g, 0x1234, 1);
    assert!(g.slot_of_id(id).is_some());
    assert!(g.slot_of_id(id + 32768).is_none(), "S14: wrong seq");
    assert!(g.slot_of_id(id + 5 * 32768).is_none(), "S14: wrong seq");
    assert!(g.slot_of_id(-1).is_none(), "S15");
    remove(&mut g, id);
    assert!(g.slot_of_id(id).is_none(), "S13: stale id");
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn key_index_survives_collisions_and_removals() {
    let d = tempdir("keys");
    let reg = Registry::open_or_create(&d, Limits { shmmni: 32768, ..LIMITS }, false).unwrap();
    let mut g = reg.lock();
    let keys: Vec<i32> = (1..3000).map(|k| k * 65536 + 7).chain([-1, i32::MIN, 0x8000_0001u32 as i32]).collect();
    let ids: Vec<i32> = keys.iter().map(|&k| create(&mut g, k, 1)).collect();
    for (k, id) in keys.iter().zip(&ids) {
        assert_eq!(g.find_key(*k), Some(id_idx(*id)), "S17: key {k}");
    }
    // Remove every other one; the rest must still be found (backward shift).
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            remove(&mut g, *id);
        }
    }
    for (i, (k, id)) in keys.iter().zip(&ids).enumerate() {
        if i % 2 == 0 {
            assert_eq!(g.find_key(*k), None);
        } else {
            assert_eq!(g.find_key(*k), Some(id_idx(*id)));
        }
    }
    assert_eq!(g.find_key(0), None, "S18: IPC_PRIVATE is never found");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn records_drive_nattch_and_reaping_detaches() {
    let d = tempdir("recs");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let a = id_idx(create(&mut g, 11, 1));
    let b = id_idx(create(&mut g, 12, 1));
    let (p3, _) = g.claim_proc(4242, 1).unwrap();
    let (p5, _) = g.claim_proc(4343, 1).unwrap();
    g.rec_add(p3, a, 1).unwrap();
    g.rec_add(p3, a, 2).unwrap();
    g.rec_add(p3, b, 1).unwrap();
    g.rec_add(p5, a, 1).unwrap();
    assert_eq!(g.slot(a).nattch.get(), 4);
    assert_eq!(g.slot(b).nattch.get(), 1);
    assert_eq!(g.rec_count(p3, a), 3);
    g.rec_sub(p3, a, 1);
    assert_eq!(g.slot(a).nattch.get(), 3);
    g.check_invariants().unwrap();
    // Process 3 dies: its fragments are detached as exit would (S120).
    let touched = g.reap_proc(p3, 1000);
    assert_eq!(touched.len(), 2);
    assert_eq!(g.slot(a).nattch.get(), 1);
    assert_eq!(g.slot(b).nattch.get(), 0);
    assert_eq!(g.slot(a).lpid.get(), 4242);
    assert_eq!(g.slot(a).dtime.get(), 1000);
    assert_eq!(g.proc_entry(p3).pid.get(), 0, "the entry is free again");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn repair_rebuilds_every_derived_structure() {
    let d = tempdir("repair");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let a = id_idx(create(&mut g, 21, 3));
    let b = id_idx(create(&mut g, 22, 5));
    let (p1, _) = g.claim_proc(1, 1).unwrap();
    g.rec_add(p1, a, 2).unwrap();
    g.rec_add(p1, b, 1).unwrap();
    // Scribble over everything derived, as a holder killed mid-update might.
    g.hdr().in_use.set(77);
    g.hdr().shm_tot.set(1);
    g.hdr().max_idx.set(900);
    g.hdr().rec_free.set(NIL);
    g.slot(a).nattch.set(99);
    g.slot(b).rec_head.set(12345);
    g.proc_entry(p1).rec_head.set(NIL);
    assert!(g.check_invariants().is_err());
    g.repair();
    g.check_invariants().unwrap();
    assert_eq!(g.hdr().in_use.get(), 2);
    assert_eq!(g.hdr().shm_tot.get(), 8);
    assert_eq!(g.slot(a).nattch.get(), 2);
    assert_eq!(g.slot(b).nattch.get(), 1);
    assert_eq!(g.find_key(22), Some(b));
    assert_eq!(g.reap_proc(p1, 5).len(), 2);
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn robust_lock_recovers_from_a_killed_holder() {
    let d = tempdir("robust");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    {
        let mut g = reg.lock();
        create(&mut g, 31, 1);
    }
    // SAFETY: the child only takes the lock and half-updates, then is killed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let reg2 = Registry::open_or_create(&d, LIMITS, false).unwrap();
        let g = reg2.lock();
        g.hdr().in_use.set(1000); // a half-done update
        std::mem::forget(g);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let g = reg.lock(); // EOWNERDEAD → repair
    g.check_invariants().unwrap();
    assert_eq!(g.hdr().in_use.get(), 1);
    drop(g);
    let g = reg.lock(); // and the lock is usable again
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn foreign_files_are_refused_with_a_clear_error() {
    let d = tempdir("foreign");
    std::fs::write(d.join("registry"), b"hello, I am not a registry").unwrap();
    let e = Registry::open_or_create(&d, LIMITS, false).err().expect("refused").to_string();
    assert!(e.contains("registry") && e.contains("not a shmshim registry"), "{e}");
    assert!(e.contains(&d.join("registry").display().to_string()), "names the file: {e}");
    // Right size, wrong magic.
    std::fs::write(d.join("registry"), vec![0x5au8; FILE_SIZE]).unwrap();
    let e = Registry::open_or_create(&d, LIMITS, false).err().expect("refused").to_string();
    assert!(e.contains("bad magic"), "{e}");
    // Truncated: a real registry cut short.
    std::fs::remove_file(d.join("registry")).unwrap();
    drop(Registry::open_or_create(&d, LIMITS, false).unwrap());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(d.join("registry")).unwrap();
    f.set_len(FILE_SIZE as u64 / 2).unwrap();
    let e = Registry::open_or_create(&d, LIMITS, false).err().expect("refused").to_string();
    assert!(e.contains("truncated"), "{e}");
    // Another layout version.
    f.set_len(FILE_SIZE as u64).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&99u32.to_ne_bytes(), 8).unwrap();
    let e = Registry::open_or_create(&d, LIMITS, false).err().expect("refused").to_string();
    assert!(e.contains("version 99"), "{e}");
    // The file is left as it was: nothing is overwritten.
    let mut b = [0u8; 4];
    f.read_at(&mut b, 8).unwrap();
    assert_eq!(u32::from_ne_bytes(b), 99);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn record_sizes_are_as_documented() {
    // docs/ARCHITECTURE.md states these per-segment / per-process / per-attach costs.
    assert_eq!(std::mem::size_of::<Slot>(), 136);
    assert_eq!(std::mem::size_of::<ProcEntry>(), 24);
    assert_eq!(std::mem::size_of::<Rec>(), 32);
    // Slots and key index exist twice: live and published.
    assert_eq!(FILE_SIZE, HEADER_SIZE + 2 * (MAX_SLOTS * 136 + INDEX_SIZE * 4) + MAX_PROCS * 24 + MAX_RECS * 32);
}

#[test]
fn an_idle_namespace_costs_a_few_pages() {
    use std::os::unix::fs::MetadataExt;
    let d = tempdir("sparse");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    for _ in 0..10 {
        create(&mut g, 0, 1);
    }
    let (p, _) = g.claim_proc(7, 1).unwrap();
    g.rec_add(p, 0, 1).unwrap();
    g.check_invariants().unwrap();
    g.repair();
    g.check_invariants().unwrap();
    drop(g);
    let allocated = std::fs::metadata(d.join("registry")).unwrap().blocks() * 512;
    // Header and both key indexes (allocated when built) and one chunk of each
    // region, slots twice.
    assert!(allocated <= HEADER_SIZE as u64 + 2 * 256 * 1024 + 4 * 64 * 1024, "registry allocates {allocated} bytes for 10 segments");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn repair_finishes_a_destruction_cut_short() {
    // A holder killed between the last detach of a removed segment and its
    // destruction leaves it SHM_DEST with nattch 0 (S75): repair destroys it.
    let d = tempdir("destcut");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let id = create(&mut g, 0, 2);
    let keep = create(&mut g, 41, 1);
    let idx = id_idx(id);
    g.slot(idx).mode.set(g.slot(idx).mode.get() | SHM_DEST);
    assert!(g.check_invariants().is_err(), "check flags the half-done destruction");
    let epoch = g.hdr().destroy_epoch.get();
    g.repair();
    g.check_invariants().unwrap();
    assert!(g.slot_of_id(id).is_none(), "destroyed");
    assert!(g.slot_of_id(keep).is_some());
    assert_eq!(g.hdr().in_use.get(), 1);
    assert_eq!(g.hdr().destroy_epoch.get(), epoch + 1, "recorded for descriptor sweeps");
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_full_filesystem_fails_the_call_that_needs_space_never_a_later_access() {
    // A 1 MiB tmpfs: the registry's header and index fit; slots run out.
    let d = tempdir("fullfs");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let c = |s: &std::path::Path| std::ffi::CString::new(s.to_str().unwrap()).unwrap();
    // SAFETY: mount(2) with valid NUL-terminated strings (the tests run as root).
    let r = unsafe { libc::mount(c"tmpfs".as_ptr(), c(&mnt).as_ptr(), c"tmpfs".as_ptr(), 0, c"size=1m".as_ptr() as *const _) };
    assert_eq!(r, 0, "mounting a 1 MiB tmpfs (the tests run as root): {}", std::io::Error::last_os_error());
    let res = std::panic::catch_unwind(|| {
        let reg = Registry::open_or_create(&mnt, Limits { shmmni: 32768, ..LIMITS }, false).unwrap();
        // Fill the filesystem beside the registry.
        let filler = mnt.join("filler");
        let _ = std::fs::write(&filler, vec![1u8; 1 << 20]);
        let mut g = reg.lock();
        let mut created = 0;
        let mut err = None;
        for _ in 0..32768 {
            let p = GetParams { key: 0, size: 4096, flg: 0o1600 };
            let mut creds = Creds::current();
            let plan = lifecycle::newseg_plan(&g, &mut creds, &p).unwrap();
            match lifecycle::newseg_publish(&mut g, &mut creds, &p, &plan, 0, Holder::Server { fd: -1, gen: 0 }) {
                Ok(_) => created += 1,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err, Some(shmshim_core::sys::Errno(libc::ENOSPC)), "after {created} creates");
        // Everything created is intact and readable; no access raised SIGBUS.
        g.check_invariants().unwrap();
        assert_eq!(g.hdr().in_use.get(), created);
    });
    // SAFETY: unmounting what we mounted.
    unsafe { libc::umount2(c(&mnt).as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_dir_all(&d).unwrap();
    res.unwrap();
}

#[test]
fn readers_without_the_lock_never_wait_for_a_writer() {
    // A writer that holds the lock in the middle of an update (as one stopped by
    // SIGSTOP would) leaves lock-free readers the state before it, at once.
    let d = tempdir("latch");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let a = create(&mut g, 0x51, 1);
    drop(g);
    let mut g = reg.lock();
    remove(&mut g, a);
    let b = create(&mut g, 0x52, 2);
    let seen = std::thread::scope(|s| {
        s.spawn(|| {
            let t = std::time::Instant::now();
            let r = reg.read(|v| (v.find_key(0x51), v.find_key(0x52), v.in_use(), v.shm_tot(), v.slot_of_id(a).is_some()));
            (r, t.elapsed())
        })
        .join()
        .unwrap()
    });
    let (r, took) = seen;
    assert_eq!(r.unwrap(), (Some(id_idx(a)), None, 1, 1, true), "readers see the state before the update");
    assert!(took < std::time::Duration::from_millis(500), "a reader waited {took:?} for a holder of the lock");
    drop(g);
    let r = reg.read(|v| (v.find_key(0x51), v.find_key(0x52), v.in_use(), v.shm_tot(), v.slot_of_id(a).is_some(), v.slot_of_id(b).is_some()));
    assert_eq!(r.unwrap(), (None, Some(id_idx(b)), 1, 2, false, true), "and the whole update once it is published");
    reg.lock().check_invariants().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_fill_holds_attaches_back_until_it_ends_or_its_process_is_gone() {
    let d = tempdir("fill");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let mut g = reg.lock();
    let a = id_idx(create(&mut g, 21, 64));
    let serial = g.slot(a).serial.get();
    let (filler, _) = g.claim_proc(5151, 1).unwrap();
    let (other, _) = g.claim_proc(5252, 1).unwrap();
    g.rec_add(filler, a, 1).unwrap();
    assert!(!g.filling(serial));
    let k = g.fill_begin(serial, filler).expect("a free fill entry");
    // Another process's attach may not begin, and the filler learns it is wanted.
    assert!(!reg.fill_wanted(k, serial));
    let mut creds = Creds::current();
    let id = make_id(g.slot(a).seq.get(), a as u32);
    let held = lifecycle::shmat_hold(&mut g, &mut creds, other, id, 0o600);
    assert_eq!(held.err().map(|e| e.0), Some(lifecycle::FILL_WAIT));
    assert!(reg.fill_wanted(k, serial));
    assert_eq!(g.slot(a).nattch.get(), 1, "a refused attach holds nothing");
    // Ended: the attach goes ahead.
    reg.fill_end(k, serial);
    assert!(!g.filling(serial));
    assert!(lifecycle::shmat_hold(&mut g, &mut creds, other, id, 0o600).is_ok());
    // A filler that dies mid-fill: its entry counts as free once the process is gone.
    let k = g.fill_begin(serial, filler).unwrap();
    assert!(g.filling(serial));
    g.reap_proc(filler, 1000);
    assert!(!g.filling(serial), "the dead filler's entry is freed");
    // Sixteen fills at once at most; entries of dead processes are reused.
    let (p, _) = g.claim_proc(5353, 1).unwrap();
    let ks: Vec<usize> = (0..FILLS).map(|_| g.fill_begin(serial, p).expect("room")).collect();
    assert!(ks.contains(&k));
    assert!(g.fill_begin(serial, p).is_none());
    for k in ks {
        reg.fill_end(k, serial);
    }
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}
