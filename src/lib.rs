//! shmshim: Linux System V shared memory (`shmget`, `shmat`, `shmdt`, `shmctl`)
//! reimplemented in userspace on memfd + mmap, loaded with `LD_PRELOAD`.
//!
//! See `docs/ARCHITECTURE.md` for the design, `README.md` for use.

pub mod cell;
pub mod client;
pub mod config;
pub mod creds;
pub mod frags;
pub mod fsmutex;
pub mod hooks;
pub mod log;
pub mod process;
pub mod proto;
pub mod registry;
pub mod server;
pub mod shm;
pub mod sys;
