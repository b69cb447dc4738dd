//! The fragment algebra: how munmap, mprotect and madvise split and merge one
//! attach's VMAs, as the kernel does for shm mappings (SEMANTICS S71–S74, S124).
//! Pure functions over `Frag` lists, no system calls.

/// Fragment flag: MADV_DONTFORK (VM_DONTCOPY), not inherited by fork (S124).
pub const FL_DONTFORK: u32 = 1 << 8;
/// Fragment flag: MADV_DONTDUMP (VM_DONTDUMP).
pub const FL_DONTDUMP: u32 = 1 << 9;

/// One mapping fragment (a VMA of an attach). `pgoff` is the byte offset in the
/// segment of `addr`; `flags` holds the PROT_* bits and FL_* flags, which decide
/// whether neighbouring fragments may merge (S72).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frag {
    pub addr: usize,
    pub len: usize,
    pub pgoff: usize,
    pub flags: u32,
}

impl Frag {
    pub fn end(&self) -> usize {
        self.addr + self.len
    }
    pub fn dontfork(&self) -> bool {
        self.flags & FL_DONTFORK != 0
    }
}

/// What a memory-management call did to the address space, for fragment tracking.
#[derive(Clone, Copy, Debug)]
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
    pub fn new_flags(self, old: u32) -> u32 {
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
pub fn apply_frags(frags: &mut Vec<Frag>, start: usize, end: usize, change: VmChange) -> (u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: usize, len: usize, pgoff: usize, flags: u32) -> Frag {
        Frag { addr, len, pgoff, flags }
    }

    const P: usize = 4096;

    #[test]
    fn s71_unmapping_a_middle_page_splits_in_two() {
        let mut v = vec![f(10 * P, 3 * P, 0, 3)];
        assert_eq!(apply_frags(&mut v, 11 * P, 12 * P, VmChange::Unmap), (2, 1));
        assert_eq!(v, vec![f(10 * P, P, 0, 3), f(12 * P, P, 2 * P, 3)]);
    }

    #[test]
    fn s72_protecting_a_middle_page_makes_three_and_restoring_does_not_merge() {
        let mut v = vec![f(0, 3 * P, 0, 3)];
        assert_eq!(apply_frags(&mut v, P, 2 * P, VmChange::Prot(1)), (2, 0));
        assert_eq!(v.len(), 3);
        // Restoring the whole middle fragment changes it in place: a VMA would be
        // deleted by a merge, which shm VMAs never allow.
        assert_eq!(apply_frags(&mut v, P, 2 * P, VmChange::Prot(3)), (0, 0));
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn a_changed_prefix_joins_an_equal_neighbour() {
        let mut v = vec![f(0, P, 0, 1), f(P, 2 * P, P, 3)];
        assert_eq!(apply_frags(&mut v, P, 2 * P, VmChange::Prot(1)), (0, 0));
        assert_eq!(v, vec![f(0, 2 * P, 0, 1), f(2 * P, P, 2 * P, 3)]);
    }

    #[test]
    fn s124_dontfork_flag_is_set_and_cleared() {
        let mut v = vec![f(0, P, 0, 3)];
        apply_frags(&mut v, 0, P, VmChange::Flag(FL_DONTFORK, true));
        assert!(v[0].dontfork());
        apply_frags(&mut v, 0, P, VmChange::Flag(FL_DONTFORK, false));
        assert!(!v[0].dontfork());
    }

    #[test]
    fn unmapping_everything_closes_each_fragment() {
        let mut v = vec![f(0, P, 0, 3), f(P, P, P, 1)];
        assert_eq!(apply_frags(&mut v, 0, 2 * P, VmChange::Unmap), (0, 2));
        assert!(v.is_empty());
    }
}
