//! shmshim: Linux System V shared memory (`shmget`, `shmat`, `shmdt`, `shmctl`)
//! reimplemented in userspace on memfd + mmap, loaded with `LD_PRELOAD`.
//!
//! See `docs/ARCHITECTURE.md` for the design, `README.md` for use.

pub mod config;
pub mod fsmutex;
pub mod hooks;
pub mod keeper;
pub mod log;
pub mod process;
pub mod registry;
pub mod shm;
pub mod sys;
