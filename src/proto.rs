//! The messages between participants and a namespace's server, on a
//! `SOCK_SEQPACKET` connection (one message per packet, order kept).
//!
//! Every message is a [`Msg`]: an operation, an errno for replies, six numbers whose
//! meaning depends on the operation, and up to 112 bytes of data (a `struct
//! shmid_ds` for `IPC_SET`/`IPC_STAT`). Requests that change the namespace carry
//! the sender's credentials (`SCM_CREDENTIALS`, checked by the kernel); replies that
//! hand out memory carry a descriptor (`SCM_RIGHTS`).

/// HELLO {a: pid, b: entry + 1 (0: none yet), c: gen, d: start time}
/// → {a: entry, b: gen, c: server generation}, with two descriptors: the shared
/// epoll instance and the server-death pipe.
pub const HELLO: u32 = 1;
/// ADOPT {a: entry, b: gen}, fds [the server's end of a child's connection]; no
/// reply (a fork in a private namespace: the parent claimed the child's entry).
pub const ADOPT: u32 = 2;
/// MAKE {a: memfd flags, b: file length} → {a: server fd number, b: inode}, fds
/// [the memfd]: a memfd the server holds from now on.
pub const MAKE: u32 = 3;
/// NAMED {a: server fd number, b: serial, c: slot}: the memfd a MAKE gave was
/// published as that segment (no reply).
pub const NAMED: u32 = 8;
/// GET {a: slot, b: serial, c: 1 for read-only} → a descriptor, with exactly
/// the access the caller's credentials allow.
pub const GET: u32 = 4;
/// REFILL: a quarter of the pool is gone, or a removed segment's memory is to be
/// released now (no reply).
pub const REFILL: u32 = 5;
/// CHECK → {err: 0 or EIO, data: what does not hold}.
pub const CHECK: u32 = 6;
/// SYNC → {}: answered once the server has applied every death it was told of.
pub const SYNC: u32 = 7;
/// SHMGET {a: key, b: size, c: shmflg} → {a: id} (shared namespaces).
pub const SHMGET: u32 = 10;
/// SHMAT {a: id, b: access mask, c: shmflg} → {a: slot, b: serial, c: inode,
/// d: mapped length, e: segsz | noreserve << 63}, with a descriptor: the attach is
/// counted (a hold) until SHMAT_DONE.
pub const SHMAT: u32 = 11;
/// SHMAT_DONE {a: slot, b: serial, c: 1 mapped / 0 failed} → {}.
pub const SHMAT_DONE: u32 = 12;
/// VM {a: slot, b: serial, c: VMAs opened, d: VMAs closed} → {}.
pub const VM: u32 = 13;
/// SHMCTL {a: id, b: cmd, data: struct shmid_ds for IPC_SET} → {a: result,
/// c: bytes to copy out, data: them}.
pub const SHMCTL: u32 = 14;
/// FORK_REC {a: slot, b: serial, c: fragments}: one inherited attach of the child
/// announced by the FORK that follows (no reply).
pub const FORK_REC: u32 = 15;
/// FORK {}, fds [the server's end of the child's connection] → {a: entry, b: gen}.
pub const FORK: u32 = 16;

/// SYSCTL {a: lifecycle::Sysctl code, b: parsed value} → {} (shared namespaces:
/// a write of /proc/sys/kernel/shm*, by a writer the server checks again).
pub const SYSCTL: u32 = 17;

pub const DATA: usize = 112;
pub const MSG_SIZE: usize = 8 + 6 * 8 + DATA;

/// Kinds of events in the shared epoll instance (top byte of the event data).
pub const EV_CONN: u64 = 1;
pub const EV_SERVER: u64 = 2;
pub const EV_PIDFD: u64 = 3;

pub fn ev_data(kind: u64, entry: usize, gen: u32) -> u64 {
    kind << 56 | (entry as u64 & 0xff_ffff) << 32 | gen as u64
}

/// (kind, entry, gen) of a shared epoll event.
pub fn ev_parse(d: u64) -> (u64, usize, u32) {
    (d >> 56, ((d >> 32) & 0xff_ffff) as usize, d as u32)
}

#[derive(Clone, Copy, Debug)]
pub struct Msg {
    pub op: u32,
    pub err: u32,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub e: u64,
    pub f: u64,
    pub data: [u8; DATA],
}

impl Default for Msg {
    fn default() -> Msg {
        Msg { op: 0, err: 0, a: 0, b: 0, c: 0, d: 0, e: 0, f: 0, data: [0; DATA] }
    }
}

impl Msg {
    pub fn new(op: u32) -> Msg {
        Msg { op, ..Default::default() }
    }

    pub fn bytes(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        b[0..4].copy_from_slice(&self.op.to_ne_bytes());
        b[4..8].copy_from_slice(&self.err.to_ne_bytes());
        for (i, v) in [self.a, self.b, self.c, self.d, self.e, self.f].iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_ne_bytes());
        }
        b[56..].copy_from_slice(&self.data);
        b
    }

    /// Parses a message; anything shorter than a message is refused.
    pub fn parse(b: &[u8]) -> Option<Msg> {
        if b.len() != MSG_SIZE {
            return None;
        }
        let u64_at = |i: usize| u64::from_ne_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap());
        let mut m = Msg {
            op: u32::from_ne_bytes(b[0..4].try_into().ok()?),
            err: u32::from_ne_bytes(b[4..8].try_into().ok()?),
            a: u64_at(0),
            b: u64_at(1),
            c: u64_at(2),
            d: u64_at(3),
            e: u64_at(4),
            f: u64_at(5),
            data: [0; DATA],
        };
        m.data.copy_from_slice(&b[56..]);
        Some(m)
    }

    pub fn reply(op: u32, err: i32) -> Msg {
        Msg { op, err: err as u32, ..Default::default() }
    }

    pub fn text(&self) -> String {
        let end = self.data.iter().position(|&c| c == 0).unwrap_or(DATA);
        String::from_utf8_lossy(&self.data[..end]).into_owned()
    }

    pub fn set_text(&mut self, t: &str) {
        let n = t.len().min(DATA - 1);
        self.data[..n].copy_from_slice(&t.as_bytes()[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_short_ones_are_refused() {
        let mut m = Msg::new(SHMCTL);
        m.a = 7;
        m.f = u64::MAX;
        m.data[111] = 9;
        let b = m.bytes();
        let p = Msg::parse(&b).unwrap();
        assert_eq!((p.op, p.a, p.f, p.data[111]), (SHMCTL, 7, u64::MAX, 9));
        assert!(Msg::parse(&b[..MSG_SIZE - 1]).is_none());
    }

    #[test]
    fn event_data_round_trips() {
        assert_eq!(ev_parse(ev_data(EV_CONN, 16383, u32::MAX)), (EV_CONN, 16383, u32::MAX));
        assert_eq!(ev_parse(ev_data(EV_SERVER, 0, 0)).0, EV_SERVER);
    }
}
