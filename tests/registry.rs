//! Unit tests of the registry: id allocation (SEMANTICS S7–S12), the key index,
//! attach records and nattch, repair after a crash, and refusal of foreign files.

use shmshim::registry::*;
use std::path::PathBuf;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shmshim-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LIMITS: Limits = Limits { shmmax: u64::MAX - (1 << 24), shmall: u64::MAX - (1 << 24), shmmni: 4096 };

/// Creates a segment the way newseg publishes one; returns its id.
fn create(g: &RegGuard, key: i32, pages: u64) -> i32 {
    let (idx, seq) = g.alloc_idx().expect("free index");
    let h = g.hdr();
    let s = g.slot(idx);
    s.key = key;
    s.seq = seq;
    s.mode = 0o600;
    s.pages = pages;
    s.serial = h.next_serial;
    h.next_serial += 1;
    s.rec_head = NIL;
    s.nattch = 0;
    s.state = SLOT_USED;
    h.in_use += 1;
    h.shm_tot += pages;
    h.max_idx = h.max_idx.max(idx as i32);
    if key != 0 {
        g.index_insert(key, idx);
    }
    make_id(seq, idx as u32)
}

fn remove(g: &RegGuard, id: i32) {
    let idx = g.slot_of_id(id).expect("live id");
    let s = g.slot(idx);
    if s.key != 0 {
        g.index_remove(s.key, idx);
    }
    s.state = SLOT_FREE;
    g.hdr().in_use -= 1;
    g.hdr().shm_tot -= s.pages;
    g.recompute_max_idx();
}

#[test]
fn s8_first_ids_are_0_1_2_and_s9_allocation_is_cyclic() {
    let d = tempdir("s8");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    assert_eq!([create(&g, 0, 1), create(&g, 0, 1), create(&g, 0, 1)], [0, 1, 2]);
    remove(&g, 0);
    assert_eq!(create(&g, 0, 1), 3, "S9: not lowest-free");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn s10_window_and_s11_seq_wrap() {
    let d = tempdir("s10");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    let first: Vec<i32> = (0..4).map(|_| create(&g, 0, 1)).collect();
    for id in first {
        remove(&g, id);
    }
    let mut ids = Vec::new();
    for _ in 0..130 {
        let id = create(&g, 0, 1);
        ids.push(id);
        remove(&g, id);
    }
    // 4..63, then 32768..32831 (idx 0.., seq 1), then 65536.. (seq 2).
    let expect: Vec<i32> = (4..64).chain(32768..32832).chain(65536..65542).collect();
    assert_eq!(ids, expect);
    // S10: with 100 segments held the window widens past 64.
    let held: Vec<i32> = (0..100).map(|_| create(&g, 0, 1)).collect();
    assert!(held.iter().map(|&id| id_idx(id)).max().unwrap() >= 99);
    for id in held {
        remove(&g, id);
    }
    // S11: seq wraps from 65534 to 0.
    g.hdr().seq = SEQ_MAX - 1;
    // (alloc_idx keeps the slot high-water mark)
    g.hdr().idr_next = 64;
    let id = create(&g, 0, 1);
    assert_eq!(id_seq(id), 0, "seq wraps to 0 after 65534");
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn s13_s14_stale_and_wrong_seq_ids_do_not_resolve() {
    let d = tempdir("s13");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    let id = create(&g, 0x1234, 1);
    assert!(g.slot_of_id(id).is_some());
    assert!(g.slot_of_id(id + 32768).is_none(), "S14: wrong seq");
    assert!(g.slot_of_id(id + 5 * 32768).is_none(), "S14: wrong seq");
    assert!(g.slot_of_id(-1).is_none(), "S15");
    remove(&g, id);
    assert!(g.slot_of_id(id).is_none(), "S13: stale id");
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn key_index_survives_collisions_and_removals() {
    let d = tempdir("keys");
    let reg = Registry::open_or_create(&d, Limits { shmmni: 32768, ..LIMITS }, false).unwrap();
    let g = reg.lock();
    let keys: Vec<i32> = (1..3000).map(|k| k * 65536 + 7).chain([-1, i32::MIN, 0x8000_0001u32 as i32]).collect();
    let ids: Vec<i32> = keys.iter().map(|&k| create(&g, k, 1)).collect();
    for (k, id) in keys.iter().zip(&ids) {
        assert_eq!(g.find_key(*k), Some(id_idx(*id)), "S17: key {k}");
    }
    // Remove every other one; the rest must still be found (backward shift).
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            remove(&g, *id);
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
    let g = reg.lock();
    let a = id_idx(create(&g, 11, 1));
    let b = id_idx(create(&g, 12, 1));
    g.open_proc_entry(5);
    g.proc_entry(3).pid = 4242;
    g.proc_entry(5).pid = 4343;
    g.rec_add(3, a, 1).unwrap();
    g.rec_add(3, a, 2).unwrap();
    g.rec_add(3, b, 1).unwrap();
    g.rec_add(5, a, 1).unwrap();
    assert_eq!(g.slot(a).nattch, 4);
    assert_eq!(g.slot(b).nattch, 1);
    assert_eq!(g.slot_holders(a, None), vec![5, 3]);
    g.rec_sub(3, a, 1);
    assert_eq!(g.slot(a).nattch, 3);
    g.check_invariants().unwrap();
    // Process 3 dies: its fragments are detached as exit would (S120).
    let touched = g.reap_proc(3, 1000);
    assert_eq!(touched.len(), 2);
    assert_eq!(g.slot(a).nattch, 1);
    assert_eq!(g.slot(b).nattch, 0);
    assert_eq!(g.slot(a).lpid, 4242);
    assert_eq!(g.slot(a).dtime, 1000);
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn repair_rebuilds_every_derived_structure() {
    let d = tempdir("repair");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    let a = id_idx(create(&g, 21, 3));
    let b = id_idx(create(&g, 22, 5));
    g.open_proc_entry(1);
    g.proc_entry(1).pid = 1;
    g.rec_add(1, a, 2).unwrap();
    g.rec_add(1, b, 1).unwrap();
    // Scribble over everything derived, as a holder killed mid-update might.
    g.hdr().in_use = 77;
    g.hdr().shm_tot = 1;
    g.hdr().max_idx = 900;
    g.hdr().rec_free = NIL;
    g.slot(a).nattch = 99;
    g.slot(b).rec_head = 12345;
    g.proc_entry(1).rec_head = NIL;
    assert!(g.check_invariants().is_err());
    g.repair();
    g.check_invariants().unwrap();
    assert_eq!(g.hdr().in_use, 2);
    assert_eq!(g.hdr().shm_tot, 8);
    assert_eq!(g.slot(a).nattch, 2);
    assert_eq!(g.slot(b).nattch, 1);
    assert_eq!(g.find_key(22), Some(b));
    assert_eq!(g.reap_proc(1, 5).len(), 2);
    g.check_invariants().unwrap();
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn robust_lock_recovers_from_a_killed_holder() {
    let d = tempdir("robust");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    {
        let g = reg.lock();
        create(&g, 31, 1);
    }
    // SAFETY: the child only takes the lock and half-updates, then is killed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let reg2 = Registry::open_or_create(&d, LIMITS, false).unwrap();
        let g = reg2.lock();
        g.hdr().in_use = 1000; // a half-done update
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
    assert_eq!(g.hdr().in_use, 1);
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
    assert_eq!(std::mem::size_of::<ProcEntry>(), 16);
    assert_eq!(std::mem::size_of::<Rec>(), 32);
    assert_eq!(FILE_SIZE, HEADER_SIZE + MAX_SLOTS * 136 + INDEX_SIZE * 4 + MAX_PROCS * 16 + MAX_RECS * 32);
}

#[test]
fn an_idle_namespace_costs_a_few_pages() {
    use std::os::unix::fs::MetadataExt;
    let d = tempdir("sparse");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    for _ in 0..10 {
        create(&g, 0, 1);
    }
    g.open_proc_entry(0);
    g.proc_entry(0).pid = 7;
    g.rec_add(0, 0, 1).unwrap();
    g.check_invariants().unwrap();
    g.repair();
    g.check_invariants().unwrap();
    drop(g);
    let allocated = std::fs::metadata(d.join("registry")).unwrap().blocks() * 512;
    assert!(allocated <= 64 * 1024, "registry allocates {allocated} bytes for 10 segments");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn repair_finishes_a_destruction_cut_short() {
    // A holder killed between the last detach of a removed segment and its
    // destruction leaves it SHM_DEST with nattch 0 (S75): repair destroys it.
    let d = tempdir("destcut");
    let reg = Registry::open_or_create(&d, LIMITS, false).unwrap();
    let g = reg.lock();
    let id = create(&g, 0, 2);
    let keep = create(&g, 41, 1);
    let idx = id_idx(id);
    g.slot(idx).mode |= SHM_DEST;
    assert!(g.check_invariants().is_err(), "check flags the half-done destruction");
    let epoch = g.hdr().destroy_epoch.load(std::sync::atomic::Ordering::Acquire);
    g.repair();
    g.check_invariants().unwrap();
    assert!(g.slot_of_id(id).is_none(), "destroyed");
    assert!(g.slot_of_id(keep).is_some());
    assert_eq!(g.hdr().in_use, 1);
    assert_eq!(g.hdr().destroy_epoch.load(std::sync::atomic::Ordering::Acquire), epoch + 1, "recorded for descriptor sweeps");
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}
