//! Configuration, read once from the environment when the library is loaded (before
//! a program can rewrite its environment, as PostgreSQL does with its ps display).
//!
//! | variable | meaning |
//! |---|---|
//! | `SHMSHIM_DIR` | namespace directory (registry + server socket) |
//! | `SHMSHIM_SHARED` | `1`: insist on a shared (multi-user) namespace, served by `shmshim serve --shared`; refuse to run without one |
//! | `SHMSHIM_SHMMAX`, `SHMSHIM_SHMALL`, `SHMSHIM_SHMMNI` | set the namespace's limits (like writing the sysctls) |
//! | `SHMSHIM_LOG` | `1` or `stderr`: one line per call on stderr; any other value: a file to append to |
//! | `SHMSHIM_TRACE` | a file to append a machine-readable record of every SysV call to, in either mode (`shmshim compare` reads it) |
//! | `SHMSHIM_SERVER` | path of the `shmshim` binary that serves private namespaces (started automatically) |
//! | `SHMSHIM_TRAP` | `1`: also serve SysV system calls that bypass libc (a seccomp filter traps them into a `SIGSYS` handler) |
//! | `SHMSHIM_MODE` | `emulate` (default), `native` (pass every call to the kernel), `auto` (the kernel where its SysV calls work, else emulate) |

use std::path::PathBuf;
use std::sync::OnceLock as OnceCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Emulate,
    Native,
    Auto,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub dir: PathBuf,
    pub dir_from_env: bool,
    pub shared: bool,
    pub shmmax: Option<u64>,
    pub shmall: Option<u64>,
    pub shmmni: Option<u64>,
    pub log: Option<String>,
    pub trace: Option<String>,
    pub server_bin: Option<PathBuf>,
    /// SHMSHIM_TRAP: trap the SysV system calls themselves (see preload's `trap`).
    pub trap: bool,
}

static CONFIG: OnceCell<Config> = OnceCell::new();

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_u64(name: &str) -> Option<u64> {
    env(name).and_then(|v| v.trim().parse().ok())
}

/// The kernel IPC namespace this process is in (the inode of /proc/self/ns/ipc), or
/// 0 where that cannot be read.
pub fn ipc_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/ipc").ok().and_then(|l| l.to_str()?.strip_prefix("ipc:[")?.strip_suffix(']')?.parse().ok()).unwrap_or(0)
}

/// The default namespace directory, one per user and per kernel IPC namespace (as
/// the kernel scopes segments): `$XDG_RUNTIME_DIR/shmshim-ipcN`, else
/// `/dev/shm/shmshim-UID-ipcN`, else `$TMPDIR/shmshim-UID-ipcN`, else
/// `/tmp/shmshim-UID-ipcN`, N being the IPC namespace's inode.
pub fn default_dir(uid: u32) -> PathBuf {
    let ipc = ipc_namespace();
    if let Some(x) = env("XDG_RUNTIME_DIR") {
        let p = PathBuf::from(x);
        if p.is_dir() {
            return p.join(format!("shmshim-ipc{ipc}"));
        }
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && std::fs::metadata(&shm).map(|m| !m.permissions().readonly()).unwrap_or(false) {
        return shm.join(format!("shmshim-{uid}-ipc{ipc}"));
    }
    if let Some(t) = env("TMPDIR") {
        let p = PathBuf::from(t);
        if p.is_dir() {
            return p.join(format!("shmshim-{uid}-ipc{ipc}"));
        }
    }
    PathBuf::from(format!("/tmp/shmshim-{uid}-ipc{ipc}"))
}

impl Config {
    pub fn from_env() -> Config {
        let dir_env = env("SHMSHIM_DIR");
        let mode = match env("SHMSHIM_MODE").as_deref() {
            Some("native") => Mode::Native,
            Some("auto") => Mode::Auto,
            Some("emulate") | None => Mode::Emulate,
            Some(other) => {
                eprintln!("shmshim: SHMSHIM_MODE={other} is not one of emulate, native, auto; using emulate");
                Mode::Emulate
            }
        };
        Config {
            mode,
            dir_from_env: dir_env.is_some(),
            dir: dir_env.map(PathBuf::from).unwrap_or_else(|| default_dir(crate::sys::getuid())),
            shared: env("SHMSHIM_SHARED").map(|v| v == "1" || v == "yes" || v == "true").unwrap_or(false),
            shmmax: env_u64("SHMSHIM_SHMMAX"),
            shmall: env_u64("SHMSHIM_SHMALL"),
            shmmni: env_u64("SHMSHIM_SHMMNI"),
            log: env("SHMSHIM_LOG").filter(|v| v != "0"),
            trace: env("SHMSHIM_TRACE"),
            server_bin: env("SHMSHIM_SERVER").map(PathBuf::from),
            trap: env("SHMSHIM_TRAP").is_some_and(|v| v == "1" || v == "yes" || v == "true"),
        }
    }
}

pub fn get() -> &'static Config {
    CONFIG.get_or_init(Config::from_env)
}

/// Host limits from /proc/sys/kernel, falling back to the kernel's built-in values (S6).
pub fn host_limits() -> crate::registry::Limits {
    const BUILTIN: u64 = u64::MAX - (1 << 24);
    let rd = |name: &str, dflt: u64| crate::sys::read_small(&format!("/proc/sys/kernel/{name}")).and_then(|s| s.trim().parse().ok()).unwrap_or(dflt);
    let c = get();
    crate::registry::Limits {
        shmmax: c.shmmax.unwrap_or_else(|| rd("shmmax", BUILTIN)),
        shmall: c.shmall.unwrap_or_else(|| rd("shmall", BUILTIN)),
        shmmni: c.shmmni.unwrap_or_else(|| rd("shmmni", 4096)).min(crate::registry::MAX_SLOTS as u64),
    }
}

static EMULATING: OnceCell<(bool, &str)> = OnceCell::new();

/// Makes this process pass every call to the kernel, whatever SHMSHIM_MODE says:
/// for the `shmshim` binary itself (the server above all), which the library
/// reaches when it is preloaded system-wide (`/etc/ld.so.preload`) and must not
/// serve. Takes effect if called before the first `emulating`.
pub fn stand_aside() {
    let _ = EMULATING.set((false, "the shmshim binary stands aside"));
}

/// Whether this process emulates SysV shm (decided once). `auto` probes the kernel
/// with a side-effect-free IPC_INFO by raw syscall: working SysV IPC means native;
/// ENOSYS or EPERM (seccomp, no CONFIG_SYSVIPC) means emulate.
pub fn emulating() -> bool {
    decision().0
}

/// The mode decision and its reason, for the log (`log` writes it as its first
/// line).
pub fn decision() -> (bool, &'static str) {
    *EMULATING.get_or_init(|| match get().mode {
        Mode::Emulate => (true, "SHMSHIM_MODE=emulate"),
        Mode::Native => (false, "SHMSHIM_MODE=native"),
        // The trap filter (inherited, or about to be installed) would turn the
        // probe into a call to the shim itself.
        Mode::Auto if get().trap => (true, "auto with SHMSHIM_TRAP: the kernel's calls are trapped"),
        Mode::Auto => {
            let mut buf = [0u64; 16];
            match crate::sys::raw_shmctl(0, 3, buf.as_mut_ptr() as usize) {
                Err(crate::sys::Errno(libc::ENOSYS)) | Err(crate::sys::Errno(libc::EPERM)) => (true, "auto: the kernel's SysV shm is unavailable"),
                _ => (false, "auto: the kernel's SysV shm works"),
            }
        }
    })
}
