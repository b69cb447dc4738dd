//! The `shmshim` command: run programs under the shim, list and remove segments,
//! and serve namespaces (`shmshim serve`).

mod libc_calls;

use shmshim_core::{client, process, proto, registry, server, shm};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{exit, Command};

const USAGE: &str = "\
usage: shmshim <command> [args]

commands:
  run [--trap] [--] PROGRAM [ARGS...]
                               run PROGRAM with System V shared memory served by shmshim
                               (--trap: its raw SysV system calls too, SHMSHIM_TRAP=1)
  run                          run the built-in demo (unrelated processes share a segment by key)
  ls [--json]                  list the namespace's segments (the layout of `ipcs -m`)
  stat ID                      show one segment's struct shmid_ds
  rm ID... | rm --key KEY...   remove segments (like `ipcrm -m` / `ipcrm -M`)
  gc                           detach what dead or exec'd processes left attached; report it
  check                        verify the registry's invariants
  serve --dir DIR [--shared]   serve a namespace in the foreground (a private one is
                               otherwise started automatically; --shared: several users)
  sandbox [--shim] [--errno E] -- PROGRAM [ARGS...]
                               run PROGRAM with the kernel's SysV shm calls denied
                               (--shim: under shmshim, which then answers them)
  compare [--json] -- PROGRAM [ARGS...]
                               run PROGRAM on the kernel and under shmshim; compare
                               every SysV call and the exit status

`shmshim COMMAND --help` describes one command.

environment: SHMSHIM_DIR (namespace directory), SHMSHIM_LIB (library to preload),
SHMSHIM_LOG, SHMSHIM_SHMMAX / SHMSHIM_SHMALL / SHMSHIM_SHMMNI (limits); see README.md.
";

fn command_help(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "run" => "usage: shmshim run [--trap] [--] PROGRAM [ARGS...]\n\nRuns PROGRAM with libshmshim.so preloaded (put first in LD_PRELOAD, whatever the\nenvironment holds), so its shmget/shmat/shmdt/shmctl are served by shmshim in the\nnamespace $SHMSHIM_DIR. The exit status is PROGRAM's. Without PROGRAM, runs a demo:\na writer process creates a segment by key and exits, an unrelated reader finds it\nand reads it, then it is removed.\n\n--trap sets SHMSHIM_TRAP=1: a seccomp filter turns the program's SysV system calls\nthemselves into SIGSYS, which the library serves (README, \"Trap mode\").\n",
        "ls" => "usage: shmshim ls [--json]\n\nLists the segments of the namespace $SHMSHIM_DIR in the layout of `ipcs -m`\n(key, shmid, owner, perms, bytes, nattch, status), after detaching what dead\nprocesses left. --json prints the full struct shmid_ds of each as JSON.\n",
        "stat" => "usage: shmshim stat ID\n\nPrints the struct shmid_ds of segment ID (as IPC_STAT returns it).\n",
        "rm" => "usage: shmshim rm ID... | shmshim rm --key KEY...\n\nRemoves segments by id (like `ipcrm -m`) or by key (like `ipcrm -M`). A segment\nstill attached is marked for destruction and goes at its last detach.\n",
        "gc" => "usage: shmshim gc\n\nDetaches the attaches of processes that died or exec'd (they are also detached\nwhenever someone looks), destroys removed segments they held last, and reports\nwhat it did.\n",
        "check" => "usage: shmshim check\n\nVerifies the registry's invariants (counters, key index, nattch against attach\nrecords) and asks the server whether it holds every segment's memory and watches\nevery participant; exit status 1 if one does not hold.\n",
        "serve" => "usage: shmshim serve --dir DIR [--shared]\n\nServes the namespace DIR in the foreground: holds its segments' memory and learns\nof every participant's death. Without --shared it serves a private namespace (the\nlibrary starts such a server by itself, which exits when the namespace is empty;\none started by hand stays, so segments outlive containers and service restarts).\nWith --shared it serves several users: run it as root or a dedicated account;\nit alone writes the registry and holds memory, and decides every change on the\nclient's kernel-reported credentials. Removing DIR ends the server.\n",
        "sandbox" => "usage: shmshim sandbox [--shim] [--errno ENOSYS|EPERM|EACCES|N] [--] PROGRAM [ARGS...]\n\nRuns PROGRAM with the kernel's System V shared memory system calls (shmget, shmat,\nshmctl, shmdt, and the ipc() forms of 32-bit programs) failing with ENOSYS (or the\nerrno given), as in a seccomp-filtered sandbox; children inherit it. With --shim,\nPROGRAM runs under shmshim inside it: whatever SysV shared memory it gets comes\nfrom shmshim, not the kernel. The exit status is PROGRAM's.\n",
        "compare" => "usage: shmshim compare [--json] [--] PROGRAM [ARGS...]\n\nRuns PROGRAM twice: on the kernel, in a fresh IPC namespace (the host's, with a\nwarning, where one cannot be made), and under shmshim inside the sandbox of\n`shmshim sandbox`. Both runs record every SysV call (arguments, result, errno and\nthe structures shmctl fills) with ids, addresses, pids and times numbered by first\nappearance. Prints `identical` and exits 0, or the first call that differs with a\nfew calls of context from both runs and exits 1 (2: a run could not be made).\n--json prints a machine-readable report instead. PROGRAM's own output is discarded.\n",
        _ => return None,
    })
}

fn mode_line() -> String {
    use shmshim_core::config::{get, Mode};
    let m = match get().mode {
        Mode::Emulate => "emulate",
        Mode::Native => "native",
        Mode::Auto => "auto",
    };
    let effective = if shmshim_core::config::emulating() { "emulated by shmshim" } else { "served by the kernel (ipcs -m lists them)" };
    format!("namespace {} (SHMSHIM_MODE={m}: segments {effective})", get().dir.display())
}

fn die(msg: &str) -> ! {
    eprintln!("shmshim: {msg}");
    exit(2)
}

/// A command's arguments, parsed with lexopt: `flags` (`--name`), `valued`
/// options (`--name VALUE`), `-h`/`--help`, and positionals. With `program`,
/// the first positional (or whatever follows `--`) starts PROGRAM ARGS…, which
/// are taken as they are.
struct Args {
    flags: Vec<&'static str>,
    values: Vec<(&'static str, String)>,
    rest: Vec<String>,
}

impl Args {
    fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
    fn value(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

fn parse(cmd: &str, args: &[String], flags: &[&'static str], valued: &[&'static str], program: bool) -> Args {
    use lexopt::Arg::{Long, Short, Value};
    let bad = |e: lexopt::Error| -> ! { die(&format!("{cmd}: {e}; see `shmshim {cmd} --help`")) };
    let mut p = lexopt::Parser::from_args(args.iter().map(OsString::from));
    let mut out = Args { flags: Vec::new(), values: Vec::new(), rest: Vec::new() };
    loop {
        let arg = match p.next() {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(e) => bad(e),
        };
        match arg {
            Short('h') | Long("help") => {
                print!("{}", command_help(cmd).unwrap_or(USAGE));
                exit(0)
            }
            Long(name) if flags.contains(&name) => out.flags.push(flags[flags.iter().position(|f| *f == name).unwrap_or(0)]),
            Long(name) if valued.contains(&name) => {
                let key = valued[valued.iter().position(|f| *f == name).unwrap_or(0)];
                let v = p.value().unwrap_or_else(|e| bad(e));
                out.values.push((key, v.to_string_lossy().into_owned()));
            }
            Value(v) => {
                out.rest.push(v.to_string_lossy().into_owned());
                if program {
                    match p.raw_args() {
                        Ok(raw) => out.rest.extend(raw.map(|a| a.to_string_lossy().into_owned())),
                        Err(e) => bad(e),
                    }
                    break;
                }
            }
            other => bad(other.unexpected()),
        }
    }
    out
}

/// The preload library: $SHMSHIM_LIB, else libshmshim.so beside this binary.
fn library() -> PathBuf {
    if let Some(p) = std::env::var_os("SHMSHIM_LIB").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("cannot locate myself: {e}")));
    let dir = exe.parent().map(|d| d.to_path_buf()).unwrap_or_default();
    for cand in [dir.join("libshmshim.so"), dir.join("../lib/libshmshim.so")] {
        if cand.is_file() {
            return cand.canonicalize().unwrap_or(cand);
        }
    }
    die(&format!("libshmshim.so not found beside {}; build it with `cargo build --release` or set SHMSHIM_LIB", exe.display()))
}

/// LD_PRELOAD with the shim first, whatever the environment already holds.
fn preload_value(lib: &std::path::Path) -> OsString {
    let mut v = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        for part in old.to_string_lossy().split([':', ' ']) {
            if !part.is_empty() && !part.ends_with("libshmshim.so") {
                v.push(":");
                v.push(part);
            }
        }
    }
    v
}

fn cmd_run(args: &[String]) -> ! {
    let parsed = parse("run", args, &["trap"], &[], true);
    let args = parsed.rest;
    let lib = library();
    if parsed.flags.contains(&"trap") {
        // Read by the library in the program (this process is single-threaded).
        std::env::set_var("SHMSHIM_TRAP", "1");
    }
    if args.is_empty() {
        demo(&lib);
    }
    let err = Command::new(&args[0]).args(&args[1..]).env("LD_PRELOAD", preload_value(&lib)).exec();
    eprintln!("shmshim: cannot run {}: {err}", args[0]);
    exit(127)
}

const DEMO_KEY: i32 = 0x5348_4d44; // "SHMD"

/// The built-in demo: a writer process creates a segment by key, writes, and exits;
/// a separate reader process finds it by key and reads it back; then it is removed.
fn demo(lib: &std::path::Path) -> ! {
    let me = std::env::current_exe().unwrap();
    let dir = std::env::var_os("SHMSHIM_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join(format!("shmshim-demo-{}", std::process::id())));
    let own_dir = std::env::var_os("SHMSHIM_DIR").is_none();
    println!("shmshim demo: namespace {}", dir.display());
    let step = |what: &str| {
        let st = Command::new(&me)
            .args(["demo-step", what])
            .env("SHMSHIM_DIR", &dir)
            .env("LD_PRELOAD", preload_value(lib))
            .status()
            .unwrap_or_else(|e| die(&format!("demo: {e}")));
        if !st.success() {
            die(&format!("demo step `{what}` failed"));
        }
    };
    step("write");
    step("read");
    step("remove");
    if own_dir {
        std::thread::sleep(std::time::Duration::from_millis(600));
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("shmshim demo: ok");
    exit(0)
}

fn demo_step(what: &str) -> i32 {
    use libc_calls::{rmid, shmget, Attach};
    let pid = std::process::id();
    match what {
        "write" => {
            let id = match shmget(DEMO_KEY, 4096, 0o1000 | 0o600) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("demo write: shmget failed: {e}");
                    return 1;
                }
            };
            let Ok(a) = Attach::new(id, 0, 4096) else { return 1 };
            let msg = format!("hello from pid {pid}\0");
            a.write(msg.as_bytes());
            drop(a);
            println!("[writer pid {pid}] created key {DEMO_KEY:#x} as id {id}, wrote {:?}, exiting", msg.trim_end_matches('\0'));
            0
        }
        "read" => {
            let id = match shmget(DEMO_KEY, 0, 0) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("demo read: segment not found: {e}");
                    return 1;
                }
            };
            let Ok(a) = Attach::new(id, libc::SHM_RDONLY, 4096) else { return 1 };
            let s = a.read_cstr();
            drop(a);
            println!("[reader pid {pid}] found key {DEMO_KEY:#x} as id {id}, read {s:?}");
            if s.starts_with("hello from pid") {
                0
            } else {
                1
            }
        }
        "remove" => {
            let id = shmget(DEMO_KEY, 0, 0).unwrap_or(-1);
            let r = rmid(id);
            println!("[remover pid {pid}] IPC_RMID id {id}: {}", if r.is_ok() { "removed" } else { "failed" });
            if r.is_ok() {
                0
            } else {
                1
            }
        }
        _ => 2,
    }
}

fn open_namespace() -> &'static process::Namespace {
    process::namespace().unwrap_or_else(|_| die("the namespace cannot be used (see the message above)"))
}

fn seg_json(s: &shm::SegStat) -> serde_json::Value {
    serde_json::json!({
        "shmid": s.id, "key": s.key, "uid": s.uid, "gid": s.gid, "cuid": s.cuid, "cgid": s.cgid,
        "mode": s.mode, "perms": format!("{:o}", s.mode & 0o777),
        "dest": s.mode & registry::SHM_DEST != 0, "locked": s.mode & registry::SHM_LOCKED != 0,
        "segsz": s.segsz, "atime": s.atime, "dtime": s.dtime, "ctime": s.ctime,
        "cpid": s.cpid, "lpid": s.lpid, "nattch": s.nattch, "rss_bytes": s.rss_pages * 4096,
    })
}

fn cmd_ls(args: &[String]) -> i32 {
    let a = parse("ls", args, &["json"], &[], false);
    if let Some(extra) = a.rest.first() {
        die(&format!("ls: unexpected argument {extra}; see `shmshim ls --help`"));
    }
    let segs = shm::list_segments(open_namespace());
    if a.has("json") {
        let doc = serde_json::json!({
            "namespace": shmshim_core::config::get().dir.display().to_string(),
            "mode": if shmshim_core::config::emulating() { "emulate" } else { "native" },
            "segments": segs.iter().map(seg_json).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return 0;
    }
    println!("{}", mode_line());
    println!("\n------ Shared Memory Segments --------");
    println!("{:<10} {:<10} {:<10} {:<10} {:<10} {:<10} {:<12}", "key", "shmid", "owner", "perms", "bytes", "nattch", "status");
    for s in segs {
        let owner = libc_calls::user_name(s.uid);
        let mut status = String::new();
        if s.mode & registry::SHM_DEST != 0 {
            status.push_str("dest ");
        }
        if s.mode & registry::SHM_LOCKED != 0 {
            status.push_str("locked ");
        }
        println!("0x{:08x} {:<10} {:<10} {:<10o} {:<10} {:<10} {:<12}", s.key as u32, s.id, owner, s.mode & 0o777, s.segsz, s.nattch, status);
    }
    println!();
    0
}

fn parse_num(s: &str) -> Option<i64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn cmd_rm(args: &[String]) -> i32 {
    if args.is_empty() {
        die("rm: give segment ids, or --key KEY");
    }
    // In order: `--key`/`-M` makes the numbers that follow keys, `-m` ids again.
    use lexopt::Arg::{Long, Short, Value};
    let mut items: Vec<(bool, String)> = Vec::new();
    let mut by_key = false;
    let mut p = lexopt::Parser::from_args(args.iter().map(OsString::from));
    loop {
        match p.next() {
            Ok(Some(Long("key") | Short('M'))) => by_key = true,
            Ok(Some(Short('m'))) => by_key = false,
            Ok(Some(Short('h') | Long("help"))) => {
                print!("{}", command_help("rm").unwrap_or(USAGE));
                exit(0)
            }
            Ok(Some(Value(v))) => items.push((by_key, v.to_string_lossy().into_owned())),
            Ok(Some(other)) => die(&format!("rm: {}; see `shmshim rm --help`", other.unexpected())),
            Ok(None) => break,
            Err(e) => die(&format!("rm: {e}; see `shmshim rm --help`")),
        }
    }
    let mut status = 0;
    for (by_key, a) in &items {
        let (by_key, a) = (*by_key, a.as_str());
        let Some(n) = parse_num(a) else {
            eprintln!("shmshim rm: {a}: not a number");
            status = 1;
            continue;
        };
        let id = if by_key {
            match shm::shmget(n as i32, 0, 0) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("shmshim rm: key {a}: {} (no live segment has this key; `shmshim ls` lists them)", std::io::Error::from_raw_os_error(e.0));
                    status = 1;
                    continue;
                }
            }
        } else {
            n as i32
        };
        if let Err(e) = shm::shmctl(id, shm::IPC_RMID, 0) {
            let e = std::io::Error::from_raw_os_error(e.0);
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => "no such segment; `shmshim ls` lists them",
                Some(libc::EPERM) => "only the owner, the creator or root may remove it",
                _ => "",
            };
            eprintln!("shmshim rm: id {id}: {e}{}{hint}", if hint.is_empty() { "" } else { ": " });
            status = 1;
        }
    }
    status
}

fn cmd_stat(args: &[String]) -> i32 {
    let a = parse("stat", args, &[], &[], false);
    let Some(id) = a.rest.first().and_then(|a| parse_num(a)) else { die("stat: give a segment id; see `shmshim ls`") };
    let Some(s) = shm::list_segments(open_namespace()).into_iter().find(|s| s.id as i64 == id) else {
        eprintln!("shmshim stat: no segment with id {id} in {} (see `shmshim ls`)", shmshim_core::config::get().dir.display());
        return 1;
    };
    let t = |v: i64| if v == 0 { "not set".to_string() } else { v.to_string() };
    println!("shmid {}\nkey 0x{:08x} ({})\nuid {} gid {} cuid {} cgid {}\nmode {:o}{}{}\nsegsz {}\ncpid {} lpid {} nattch {}\natime {} dtime {} ctime {}\nrss {} bytes",
        s.id, s.key as u32, s.key, s.uid, s.gid, s.cuid, s.cgid, s.mode & 0o777,
        if s.mode & registry::SHM_DEST != 0 { " dest" } else { "" },
        if s.mode & registry::SHM_LOCKED != 0 { " locked" } else { "" },
        s.segsz, s.cpid, s.lpid, s.nattch, t(s.atime), t(s.dtime), t(s.ctime), s.rss_pages * 4096);
    0
}

fn cmd_gc() -> i32 {
    let ns = open_namespace();
    let count = |reg: &registry::Registry| {
        let g = reg.lock_if_writable();
        let n = reg.used_procs().count();
        let segs = reg.header().in_use.get();
        drop(g);
        (n, segs)
    };
    let (procs, segs) = count(&ns.reg);
    let r = client::sync(ns);
    let (procs2, segs2) = count(&ns.reg);
    if let Err(e) = r {
        eprintln!("shmshim gc: {}", e.name());
        return 1;
    }
    println!("gc: detached {} dead or exec'd process(es); {} removed segment(s) destroyed", procs.saturating_sub(procs2), segs.saturating_sub(segs2));
    0
}

fn cmd_check() -> i32 {
    let ns = open_namespace();
    let reg = &ns.reg;
    if let Err(e) = client::sync(ns) {
        println!("registry {}: cannot reach the namespace's server: {}", reg.path.display(), e.name());
        return 1;
    }
    let local_check = if reg.writable {
        match reg.lock_bounded() {
            Ok(g) => g.check_invariants(),
            Err(_) => Err("its lock is held by a process that does not let go of it (stopped?)".to_string()),
        }
    } else {
        reg.read_live(|r| r.check_invariants()).unwrap_or_else(|e| Err(e.name().to_string()))
    };
    if let Err(e) = local_check {
        println!("registry {}: {e}", reg.path.display());
        return 1;
    }
    // The server checks what only it knows: that it holds every segment's memory.
    let mut local = process::LOCAL.lock();
    if reg.header().in_use.get() > 0 || local.conn.is_some() {
        match client::request(&mut local, ns, &proto::Msg::new(proto::CHECK), &[]) {
            Ok(_) => {}
            Err(shmshim_core::sys::Errno(libc::EIO)) => {
                println!("registry {}: the server reports an inconsistency", reg.path.display());
                return 1;
            }
            Err(e) => {
                println!("registry {}: cannot reach the namespace's server: {}", reg.path.display(), e.name());
                return 1;
            }
        }
    }
    println!("registry {}: ok ({} segments)", reg.path.display(), reg.header().in_use.get());
    0
}

fn cmd_serve(rest: &[String]) -> i32 {
    let a = parse("serve", rest, &["shared", "daemon"], &["dir"], false);
    if let Some(extra) = a.rest.first() {
        die(&format!("serve: unexpected argument {extra}; see `shmshim serve --help`"));
    }
    let dir = a.value("dir").map(PathBuf::from).unwrap_or_else(|| shmshim_core::config::get().dir.clone());
    server::serve(server::Options { dir, shared: a.has("shared"), auto: a.has("daemon") })
}

fn parse_errno(s: &str) -> i32 {
    match s {
        "ENOSYS" => libc::ENOSYS,
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "EINVAL" => libc::EINVAL,
        n => n.parse().ok().filter(|&n: &i32| n > 0 && n < 4096).unwrap_or_else(|| die(&format!("--errno {n}: not an errno name or number"))),
    }
}

fn cmd_sandbox(rest: &[String]) -> ! {
    let a = parse("sandbox", rest, &["shim"], &["errno"], true);
    let shim = a.has("shim");
    let errno = a.value("errno").map(parse_errno).unwrap_or(libc::ENOSYS);
    let prog = &a.rest;
    if prog.is_empty() {
        die("sandbox: no PROGRAM; see `shmshim sandbox --help`");
    }
    let mut cmd = Command::new(&prog[0]);
    cmd.args(&prog[1..]);
    if shim {
        cmd.env("LD_PRELOAD", preload_value(&library()));
        if std::env::var_os("SHMSHIM_MODE").is_none() {
            cmd.env("SHMSHIM_MODE", "emulate");
        }
    }
    if let Err(e) = shmshim_core::sys::deny_sysv_shm(errno) {
        die(&format!("sandbox: cannot install the seccomp filter: {}", e.name()));
    }
    let err = cmd.exec();
    eprintln!("shmshim: cannot run {}: {err}", prog[0]);
    exit(127)
}

/// One traced run of `shmshim compare`.
struct Run {
    status: std::process::ExitStatus,
    trace: String,
}

fn traced_run(prog: &[String], native: bool, work: &std::path::Path) -> Result<Run, String> {
    let side = if native { "native" } else { "shim" };
    let trace = work.join(format!("{side}.trace"));
    let out = std::fs::File::create(work.join(format!("{side}.out"))).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(work.join(format!("{side}.err"))).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&prog[0]);
    cmd.args(&prog[1..])
        .env("LD_PRELOAD", preload_value(&library()))
        .env("SHMSHIM_TRACE", &trace)
        .env("SHMSHIM_MODE", if native { "native" } else { "emulate" })
        .env("SHMSHIM_DIR", work.join("ns"))
        .env_remove("SHMSHIM_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    if !native {
        shmshim_core::sys::deny_sysv_shm_in(&mut cmd, libc::ENOSYS);
    }
    let status = cmd.status().map_err(|e| format!("cannot run {}: {e}", prog[0]))?;
    let trace = std::fs::read_to_string(&trace).unwrap_or_default();
    Ok(Run { status, trace })
}

fn status_text(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown".into(),
    }
}

fn cmd_compare(rest: &[String]) -> i32 {
    use shmshim_core::compare::{first_difference, normalize};
    let a = parse("compare", rest, &["json"], &[], true);
    let json = a.has("json");
    let prog = &a.rest;
    if prog.is_empty() {
        die("compare: no PROGRAM; see `shmshim compare --help`");
    }
    let work = std::env::temp_dir().join(format!("shmshim-compare.{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        die(&format!("compare: {}: {e}", work.display()));
    }
    // Both runs get this fresh IPC namespace: the native one needs it, and the shim
    // one's kernel calls are denied anyway.
    let mut warning = None;
    if let Err(e) = shmshim_core::sys::new_ipc_namespace() {
        warning = Some(format!("cannot make a fresh IPC namespace ({}): the native run uses the host's", e.name()));
        if !json {
            eprintln!("shmshim: warning: {}", warning.as_deref().unwrap_or(""));
        }
    }
    let runs = traced_run(prog, true, &work).and_then(|n| traced_run(prog, false, &work).map(|s| (n, s)));
    // Let an automatically started server of the shim run leave before the
    // directory goes.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = std::fs::remove_dir_all(&work);
    let (native, shim) = match runs {
        Ok(r) => r,
        Err(e) => die(&format!("compare: {e}")),
    };
    let (a, b) = (normalize(&native.trace), normalize(&shim.trace));
    let (sa, sb) = (status_text(&native.status), status_text(&shim.status));
    let diff = first_difference(&a, &b);
    let same = diff.is_none() && sa == sb;
    if json {
        let side = |n: &shmshim_core::compare::Normalized, st: &str| serde_json::json!({"status": st, "processes": n.processes.len(), "calls": n.calls()});
        let d = diff.as_ref().map(|d| serde_json::json!({"process": d.process, "call": d.index, "native": d.native, "shim": d.shim}));
        let doc = serde_json::json!({"identical": same, "native": side(&a, &sa), "shim": side(&b, &sb), "first_difference": d, "warning": warning});
        println!("{doc}");
    } else if same {
        println!("identical ({} calls in {} processes; {sa})", a.calls(), a.processes.len());
    } else {
        match &diff {
            Some(d) => {
                println!("differs at call {} of {} (calls before it shown for context):", d.index + 1, d.process);
                println!("  native:");
                for c in &d.native {
                    println!("    {c}");
                }
                if d.native.len() <= d.index.min(shmshim_core::compare::CONTEXT) {
                    println!("    (no such call)");
                }
                println!("  shim:");
                for c in &d.shim {
                    println!("    {c}");
                }
                if d.shim.len() <= d.index.min(shmshim_core::compare::CONTEXT) {
                    println!("    (no such call)");
                }
            }
            None => println!("every call is the same, but the exit status differs: native {sa}, shim {sb}"),
        }
    }
    if same {
        0
    } else {
        1
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(cmd) = args.get(1) else {
        eprint!("{USAGE}");
        exit(2)
    };
    let rest = &args[2..];
    let code = match cmd.as_str() {
        "run" => cmd_run(rest),
        "ls" => cmd_ls(rest),
        "stat" => cmd_stat(rest),
        "gc" => {
            parse("gc", rest, &[], &[], false);
            cmd_gc()
        }
        "rm" => cmd_rm(rest),
        "check" => {
            parse("check", rest, &[], &[], false);
            cmd_check()
        }
        "demo-step" => demo_step(rest.first().map(|s| s.as_str()).unwrap_or("")),
        "serve" => cmd_serve(rest),
        "sandbox" => cmd_sandbox(rest),
        "compare" => cmd_compare(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            0
        }
        other => die(&format!("unknown command {other:?}; see `shmshim --help`")),
    };
    exit(code)
}
