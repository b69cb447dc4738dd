//! shmshim: Linux System V shared memory (`shmget`, `shmat`, `shmdt`, `shmctl`)
//! reimplemented in userspace on memfd + mmap, loaded with `LD_PRELOAD`.
//!
//! This crate is the core (semantics, registry, server, client); the preload
//! library with the C ABI hooks is the `preload` crate, and the `shmshim` binary
//! (CLI and server, crate `cli`) exports no hook. See `docs/ARCHITECTURE.md` for the design,
//! `README.md` for use.

pub mod cell;
pub mod client;
pub mod compare;
pub mod config;
pub mod creds;
pub mod frags;
pub mod fsmutex;
pub mod lifecycle;
pub mod log;
pub mod process;
pub mod proto;
pub mod registry;
pub mod server;
pub mod shared;
pub mod shm;
pub mod sys;
pub mod trace;
