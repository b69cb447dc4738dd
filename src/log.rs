//! `SHMSHIM_LOG`: one line per intercepted call (call, arguments, result, errno
//! name, pid) on stderr or appended to a file. Off by default; when off, a call
//! costs one branch.

use crate::sys::{self, Errno};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock as OnceCell;

enum Sink {
    Off,
    Stderr,
    File(OwnedFd),
}

static SINK: OnceCell<Sink> = OnceCell::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let sink = match crate::config::get().log.as_deref() {
            None => Sink::Off,
            Some("1") | Some("stderr") | Some("yes") | Some("true") => Sink::Stderr,
            Some(path) => std::ffi::CString::new(path)
                .ok()
                .and_then(|p| sys::open(&p, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, 0o644).ok())
                .map(|fd| Sink::File(sys::high_fd(fd)))
                .unwrap_or(Sink::Stderr),
        };
        // The first line says how this process decided between the kernel and
        // the shim.
        let (on, why) = crate::config::decision();
        write_to(&sink, &format!("shmshim[{}]: mode {} ({why})\n", sys::getpid(), if on { "emulate" } else { "native" }));
        sink
    })
}

pub fn enabled() -> bool {
    !matches!(sink(), Sink::Off)
}

/// Logs one call. `what` is only evaluated when logging is on.
pub fn call(what: impl FnOnce() -> String, r: Result<i64, Errno>) {
    if !enabled() {
        return;
    }
    let saved = sys::errno();
    let line = match r {
        Ok(v) => format!("shmshim[{}]: {} = {}\n", sys::getpid(), what(), v),
        Err(e) => format!("shmshim[{}]: {} = -1 {}\n", sys::getpid(), what(), e.name()),
    };
    write_line(&line);
    sys::set_errno(saved);
}

pub fn write_line(line: &str) {
    write_to(sink(), line);
}

fn write_to(sink: &Sink, line: &str) {
    let fd = match sink {
        Sink::Off => return,
        Sink::Stderr => 2,
        Sink::File(f) => f.as_raw_fd(),
    };
    let _ = sys::write_all(fd, line.as_bytes());
}
