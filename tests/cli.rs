//! The `shmshim` command and the library's switches, driven as a user would:
//! `SHMSHIM_MODE` (emulate / native / auto), `SHMSHIM_LOG`, `syscall(SYS_shm*)`
//! interception (SEMANTICS S155), `shmshim run` (exit status, LD_PRELOAD),
//! `ls --json` / `stat` / `rm` / `gc`, `sandbox`, `compare`, and `scripts/install`
//! with system-wide use through /etc/ld.so.preload.
//!
//! Needs gcc and util-linux (`unshare`, `ipcs`), as scripts/test does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// Builds the release library and binary once, plus the C helpers.
fn setup() -> &'static (PathBuf, PathBuf) {
    static S: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let st = Command::new(env!("CARGO")).args(["build", "--release", "--quiet"]).current_dir(root()).status().unwrap();
        assert!(st.success(), "cargo build --release");
        let out = root().join("target/cli-test");
        std::fs::create_dir_all(&out).unwrap();
        let probe = out.join("probe");
        let src = out.join("probe.c");
        std::fs::write(&src, PROBE_C).unwrap();
        let ok = Command::new("gcc").args(["-O1", "-o"]).arg(&probe).arg(&src).status().unwrap();
        assert!(ok.success(), "gcc probe.c");
        let nosysv = out.join("nosysv");
        let ok = Command::new("gcc").args(["-O1", "-o"]).arg(&nosysv).arg(root().join("scripts/nosysv.c")).status().unwrap();
        assert!(ok.success(), "gcc nosysv.c");
        (probe, nosysv)
    })
}

/// `probe create KEY` prints the id; `probe find KEY`; `probe rm KEY`;
/// `probe raw KEY` does create/stat/attach/detach/remove through syscall(2).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[2], 0, 0);
    if (!strcmp(argv[1], "create")) {
        int id = shmget(key, 4096, IPC_CREAT | 0600);
        if (id < 0) { printf("error %s\n", strerror(errno)); return 1; }
        printf("%d\n", id); return 0;
    }
    if (!strcmp(argv[1], "find")) { int id = shmget(key, 0, 0); printf("%d %d\n", id, id < 0 ? errno : 0); return 0; }
    if (!strcmp(argv[1], "rm")) { return shmctl(shmget(key, 0, 0), IPC_RMID, 0) != 0; }
    if (!strcmp(argv[1], "hold")) {
        int a = shmget(key, 4096, IPC_CREAT | 0600), b = shmget(key + 1, 4096, IPC_CREAT | 0600);
        char *p = shmat(a, 0, 0), *q = shmat(b, 0, 0);
        strcpy(p, "first"); strcpy(q, "second");
        printf("ready\n"); fflush(stdout);
        sleep(atoi(argv[3]));
        return 0;
    }
    if (!strcmp(argv[1], "read")) {
        int id = shmget(key, 0, 0);
        char *p = shmat(id, 0, 0);
        if (p == (void *)-1) { printf("shmat %s\n", strerror(errno)); return 1; }
        struct shmid_ds d; shmctl(id, IPC_STAT, &d);
        printf("%s %lu\n", p, (unsigned long)d.shm_nattch); return 0;
    }
    if (!strcmp(argv[1], "fork") || !strcmp(argv[1], "rawfork")) {
        /* a child inherits an attach; the parent reads nattch while it lives */
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        char *p = shmat(id, 0, 0);
        int go[2]; if (pipe(go)) return 3;
        pid_t c = !strcmp(argv[1], "fork") ? fork() : (pid_t)syscall(SYS_fork);
        if (c == 0) { char b; read(go[0], &b, 1); _exit(0); }
        struct shmid_ds d; shmctl(id, IPC_STAT, &d);
        printf("nattch %lu\n", (unsigned long)d.shm_nattch);
        write(go[1], "x", 1); waitpid(c, 0, 0);
        shmdt(p); shmctl(id, IPC_RMID, 0);
        return 0;
    }
    if (!strcmp(argv[1], "raw")) {
        long id = syscall(SYS_shmget, key, 8192, IPC_CREAT | 0600);
        struct shmid_ds d;
        long st = syscall(SYS_shmctl, id, IPC_STAT, &d);
        char *p = (char *)syscall(SYS_shmat, id, 0, 0);
        p[0] = 'x';
        long dt = syscall(SYS_shmdt, p);
        long bad = syscall(SYS_shmctl, -1, IPC_STAT, &d);
        int e = errno;
        long rm = syscall(SYS_shmctl, id, IPC_RMID, 0);
        printf("id=%ld stat=%ld segsz=%zu dt=%ld bad=%ld/%d rm=%ld\n", id, st, d.shm_segsz, dt, bad, e, rm);
        return 0;
    }
    return 2;
}
"#;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shmshim-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run<C: std::borrow::BorrowMut<Command>>(mut cmd: C) -> Output {
    cmd.borrow_mut().output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command under the shim in namespace `dir`, optionally in the no-SysV sandbox.
fn shim(dir: &Path, sandbox: bool, args: &[&str]) -> Command {
    let (_, nosysv) = setup();
    let mut c = if sandbox { Command::new(nosysv) } else { Command::new(args[0]) };
    if sandbox {
        c.args(args);
    } else {
        c.args(&args[1..]);
    }
    c.env("LD_PRELOAD", release("libshmshim.so")).env("SHMSHIM_DIR", dir).env_remove("SHMSHIM_MODE").env_remove("SHMSHIM_LOG");
    c
}

/// Waits for the namespace's server to exit, then removes the directory.
fn finish(dir: &Path) {
    for _ in 0..50 {
        let busy = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| std::fs::read(e.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy())).unwrap_or(false));
        if !busy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn s155_syscall_interface_is_intercepted_in_the_sandbox() {
    let (probe, _) = setup();
    let dir = tempdir("raw");
    let o = run(shim(&dir, true, &[probe.to_str().unwrap(), "raw", "0x5eed7001"]));
    let t = text(&o);
    assert!(t.starts_with("id=0 stat=0 segsz=8192 dt=0 bad=-1/22 rm=0"), "{t} {}", String::from_utf8_lossy(&o.stderr));
    finish(&dir);
}

#[test]
fn mode_native_and_auto_use_the_kernel_where_it_works() {
    let (probe, nosysv) = setup();
    for mode in ["native", "auto"] {
        let dir = tempdir(mode);
        // In a private IPC namespace: the segment must be the kernel's (ipcs sees
        // it without the shim), and the shim's namespace directory stays unused.
        let script = format!("{p} create 0x5eed7002 >/dev/null && ipcs -m | grep -c 0x5eed7002; {p} rm 0x5eed7002", p = probe.display());
        let o = run(Command::new("unshare")
            .args(["--ipc", "sh", "-c", &script])
            .env("LD_PRELOAD", release("libshmshim.so"))
            .env("SHMSHIM_DIR", &dir)
            .env("SHMSHIM_MODE", mode));
        assert_eq!(text(&o).trim(), "1", "SHMSHIM_MODE={mode}: the kernel holds the segment");
        assert!(!dir.join("registry").exists(), "SHMSHIM_MODE={mode} must not touch the shim's namespace");
        finish(&dir);
    }
    // auto where the kernel refuses (seccomp ENOSYS): emulation.
    let dir = tempdir("auto-emul");
    let o = run(Command::new(nosysv)
        .args([probe.to_str().unwrap(), "create", "0x5eed7003"])
        .env("LD_PRELOAD", release("libshmshim.so"))
        .env("SHMSHIM_DIR", &dir)
        .env("SHMSHIM_MODE", "auto")
        .env("SHMSHIM_LOG", "1"));
    assert_eq!(text(&o).trim(), "0", "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mode emulate (auto: the kernel's SysV shm is unavailable)"), "the choice is logged: {err}");
    let ls = run(Command::new(release("shmshim")).arg("ls").env("SHMSHIM_DIR", &dir));
    assert!(text(&ls).contains("0x5eed7003"), "{}", text(&ls));
    let rm = run(shim(&dir, true, &[probe.to_str().unwrap(), "rm", "0x5eed7003"]));
    assert!(rm.status.success());
    finish(&dir);
}

#[test]
fn log_writes_one_line_per_call_with_result_and_errno() {
    let (probe, _) = setup();
    let dir = tempdir("log");
    std::fs::create_dir_all(&dir).unwrap();
    let logf = dir.join("calls.log");
    let o = run(shim(&dir, true, &[probe.to_str().unwrap(), "find", "0x5eed7004"]).env("SHMSHIM_LOG", &logf));
    assert_eq!(text(&o).trim(), "-1 2");
    let o = run(shim(&dir, true, &[probe.to_str().unwrap(), "create", "0x5eed7004"]).env("SHMSHIM_LOG", &logf));
    let pid_line = text(&o);
    let _ = run(shim(&dir, true, &[probe.to_str().unwrap(), "rm", "0x5eed7004"]).env("SHMSHIM_LOG", &logf));
    let log = std::fs::read_to_string(&logf).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" mode ")).collect();
    assert!(lines[0].contains("shmget(key=0x5eed7004, size=0, flg=0o0) = -1 ENOENT"), "{log}");
    assert!(lines[1].contains("shmget(key=0x5eed7004, size=4096, flg=0o1600) = ") && lines[1].ends_with(pid_line.trim()), "{log}");
    assert!(lines.iter().any(|l| l.contains("shmctl(id=0, cmd=0, buf=0x0) = 0")), "{log}");
    assert!(lines.iter().all(|l| l.starts_with("shmshim[")), "pid on every line: {log}");
    finish(&dir);
}

#[test]
fn run_passes_exit_status_and_keeps_existing_preloads() {
    let dir = tempdir("run");
    let o = run(Command::new(release("shmshim"))
        .args(["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\"; exit 7"])
        .env("SHMSHIM_DIR", &dir)
        .env("LD_PRELOAD", "/nonexistent/libother.so"));
    assert_eq!(o.status.code(), Some(7));
    let pre = text(&o);
    let parts: Vec<&str> = pre.trim().split(':').collect();
    assert!(parts[0].ends_with("libshmshim.so"), "shim first: {pre}");
    assert_eq!(parts[1], "/nonexistent/libother.so", "others kept: {pre}");
    let o = run(Command::new(release("shmshim")).args(["run", "--", "/nonexistent/prog"]).env("SHMSHIM_DIR", &dir));
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot run /nonexistent/prog"));
    finish(&dir);
}

#[test]
fn ls_json_stat_rm_gc() {
    let (probe, _) = setup();
    let dir = tempdir("ls");
    let o = run(shim(&dir, true, &[probe.to_str().unwrap(), "create", "0x5eed7005"]));
    let id = text(&o).trim().to_string();
    let bin = release("shmshim");
    let json = run(Command::new(&bin).args(["ls", "--json"]).env("SHMSHIM_DIR", &dir));
    let j = text(&json);
    assert!(j.contains(&format!("\"shmid\":{id},\"key\":{}", 0x5eed7005)) && j.contains("\"perms\":\"600\""), "{j}");
    let parsed = run(Command::new("python3").args(["-c", "import json,sys; d=json.load(sys.stdin); print(len(d['segments']), d['mode'])"]).stdin(
        std::fs::File::open({
            let f = dir.join("ls.json");
            std::fs::write(&f, &j).unwrap();
            f
        })
        .unwrap(),
    ));
    assert_eq!(text(&parsed).trim(), "1 emulate", "valid JSON");
    let st = run(Command::new(&bin).args(["stat", &id]).env("SHMSHIM_DIR", &dir));
    assert!(text(&st).contains("segsz 4096"), "{}", text(&st));
    let bad = run(Command::new(&bin).args(["rm", "12345"]).env("SHMSHIM_DIR", &dir));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such segment"));
    let gc = run(Command::new(&bin).arg("gc").env("SHMSHIM_DIR", &dir));
    assert!(text(&gc).starts_with("gc: "), "{}", text(&gc));
    let rm = run(Command::new(&bin).args(["rm", "--key", "0x5eed7005"]).env("SHMSHIM_DIR", &dir));
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    let ls = run(Command::new(&bin).arg("ls").env("SHMSHIM_DIR", &dir));
    assert!(!text(&ls).contains("0x5eed7005"));
    for cmd in ["run", "ls", "stat", "rm", "gc", "check", "serve"] {
        let h = run(Command::new(&bin).args([cmd, "--help"]));
        assert!(h.status.success() && text(&h).starts_with(&format!("usage: shmshim {cmd}")), "{cmd} --help");
    }
    finish(&dir);
}

#[test]
fn default_namespace_dir_per_user_and_without_dev_shm() {
    let (probe, nosysv) = setup();
    // $XDG_RUNTIME_DIR first.
    let xdg = tempdir("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let o = run(Command::new(nosysv)
        .args([probe.to_str().unwrap(), "create", "0x5eed7006"])
        .env("LD_PRELOAD", release("libshmshim.so"))
        .env_remove("SHMSHIM_DIR")
        .env("XDG_RUNTIME_DIR", &xdg));
    assert_eq!(text(&o).trim(), "0", "{}", String::from_utf8_lossy(&o.stderr));
    let ipc = shmshim_core::config::ipc_namespace();
    assert!(ipc != 0);
    assert!(xdg.join(format!("shmshim-ipc{ipc}/registry")).exists());
    let rm = run(Command::new(nosysv)
        .args([probe.to_str().unwrap(), "rm", "0x5eed7006"])
        .env("LD_PRELOAD", release("libshmshim.so"))
        .env_remove("SHMSHIM_DIR")
        .env("XDG_RUNTIME_DIR", &xdg));
    assert!(rm.status.success());
    finish(&xdg.join(format!("shmshim-ipc{ipc}")));
    finish(&xdg);
    // No $XDG_RUNTIME_DIR and no writable /dev/shm (as in serverless runtimes):
    // $TMPDIR/shmshim-UID. A private mount namespace hides /dev/shm.
    let tmp = tempdir("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let script = format!(
        "mount -t tmpfs -o mode=0555 none /dev/shm && {p} create 0x5eed7007 && test -f \"$TMPDIR/shmshim-$(id -u)-ipc$(readlink /proc/self/ns/ipc | tr -dc 0-9)/registry\" && echo found && {p} rm 0x5eed7007",
        p = probe.display()
    );
    let o = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", nosysv.to_str().unwrap(), "sh", "-c", &script])
        .env("LD_PRELOAD", release("libshmshim.so"))
        .env_remove("SHMSHIM_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", &tmp));
    assert_eq!(text(&o).trim(), "0\nfound", "{}", String::from_utf8_lossy(&o.stderr));
    // SAFETY: getuid takes no arguments and cannot fail.
    let uid = unsafe { libc::getuid() };
    finish(&tmp.join(format!("shmshim-{uid}-ipc{ipc}")));
    finish(&tmp);
}

#[test]
fn a_killed_server_is_replaced_and_adopts_attached_segments() {
    use std::io::BufRead;
    let (probe, _) = setup();
    let dir = tempdir("serverkill");
    let p = probe.to_str().unwrap();
    let mut holder = shim(&dir, true, &[p, "hold", "0x5eed7100", "3"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Kill the namespace's server.
    let killed = Command::new("pkill").args(["-9", "-f", &format!("serve --daemon --dir {}", dir.display())]).status().unwrap();
    assert!(killed.success(), "a server was running");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Another process attaches both segments: memory comes from the holder, and a
    // new server adopts it (the namespace must not hang).
    for (key, want) in [("0x5eed7100", "first 2"), ("0x5eed7101", "second 2")] {
        let o = run(shim(&dir, true, &[p, "read", key]).env("SHMSHIM_LOG", "0"));
        assert_eq!(text(&o).trim(), want, "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ls = run(Command::new("timeout").args(["10"]).arg(release("shmshim")).arg("ls").env("SHMSHIM_DIR", &dir));
    assert!(ls.status.success() && text(&ls).contains("0x5eed7101"), "ls must not hang: {}", text(&ls));
    holder.wait().unwrap();
    // The holder is gone; the restarted server kept the memory.
    let o = run(shim(&dir, true, &[p, "read", "0x5eed7100"]));
    assert_eq!(text(&o).trim(), "first 1");
    for key in ["0x5eed7100", "0x5eed7101"] {
        assert!(run(shim(&dir, true, &[p, "rm", key])).status.success());
    }
    finish(&dir);
}

#[test]
fn the_default_namespace_is_per_kernel_ipc_namespace() {
    // A segment left in one IPC namespace is not seen from a fresh one (as on
    // Linux), and is seen from the same one.
    let (probe, nosysv) = setup();
    let xdg = tempdir("ipcns");
    std::fs::create_dir_all(&xdg).unwrap();
    let p = probe.to_str().unwrap();
    let run_in = |ipc_unshare: bool, args: &[&str]| {
        let mut c = Command::new(if ipc_unshare { "unshare" } else { nosysv.to_str().unwrap() });
        if ipc_unshare {
            c.args(["--ipc", nosysv.to_str().unwrap()]);
        }
        run(c.args(args).env("LD_PRELOAD", release("libshmshim.so")).env_remove("SHMSHIM_DIR").env("XDG_RUNTIME_DIR", &xdg))
    };
    assert_eq!(text(&run_in(false, &[p, "create", "0x5eed7300"])).trim(), "0");
    let same = run_in(false, &[p, "find", "0x5eed7300"]);
    assert_eq!(text(&same).trim(), "0 0", "the same IPC namespace finds it");
    let other = run_in(true, &[p, "find", "0x5eed7300"]);
    assert_eq!(text(&other).trim(), format!("-1 {}", libc::ENOENT), "a fresh IPC namespace is empty: {}", String::from_utf8_lossy(&other.stderr));
    assert!(run_in(false, &[p, "rm", "0x5eed7300"]).status.success());
    for e in std::fs::read_dir(&xdg).unwrap().flatten() {
        finish(&e.path());
    }
    finish(&xdg);
}

#[test]
fn compare_reports_identical_runs_and_the_first_difference() {
    let (probe, _) = setup();
    let probe = probe.to_str().unwrap();
    let cmp = |args: &[&str]| run(Command::new(release("shmshim")).arg("compare").args(args).env_remove("SHMSHIM_DIR"));
    // A program whose calls match the kernel's.
    let o = cmp(&["--", probe, "fork", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    assert!(text(&o).starts_with("identical ("), "{}", text(&o));
    // A raw SYS_fork child is not counted by the shim (README, Known differences):
    // the parent's IPC_STAT differs, and compare says where.
    let o = cmp(&["--", probe, "rawfork", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("differs at call 3 of pid#1"), "{t}");
    assert!(t.contains("nattch=2}") && t.contains("nattch=1}"), "{t}");
    // --json: the same verdict, machine-readable.
    let o = cmp(&["--json", "--", probe, "rawfork", "0"]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.starts_with("{\"identical\":false,") && t.contains("\"first_difference\":{\"process\":\"pid#1\",\"call\":2,"), "{t}");
    // The exit status is compared and reported.
    let o = cmp(&["--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("exit 3"), "{}", text(&o));
}

#[test]
fn sandbox_denies_the_kernel_and_shim_answers_inside_it() {
    let (probe, _) = setup();
    let probe = probe.to_str().unwrap();
    let dir = tempdir("sandbox");
    let sandbox = |args: &[&str]| run(Command::new(release("shmshim")).arg("sandbox").args(args).env("SHMSHIM_DIR", &dir).env_remove("SHMSHIM_MODE"));
    // Without the shim the kernel's calls fail with ENOSYS (or the errno asked for).
    let o = sandbox(&["--", probe, "create", "0x52"]);
    assert_eq!(text(&o).trim(), "error Function not implemented");
    let o = sandbox(&["--errno", "EPERM", "--", probe, "create", "0x52"]);
    assert_eq!(text(&o).trim(), "error Operation not permitted");
    // With --shim, shmshim answers (the segment is in its namespace, not the kernel's).
    let o = sandbox(&["--shim", "--", probe, "raw", "0x53"]);
    assert!(o.status.success() && text(&o).contains("stat=0 segsz=8192 dt=0"), "{}", text(&o));
    // Children inherit the filter.
    let o = sandbox(&["--", "sh", "-c", &format!("{probe} create 0x54")]);
    assert!(!o.status.success(), "{}", text(&o));
    // The demo's steps (the shmshim binary itself) are served inside it too.
    let shmshim = release("shmshim");
    let o = sandbox(&["--shim", "--", shmshim.to_str().unwrap(), "run"]);
    assert!(o.status.success() && text(&o).contains("shmshim demo: ok"), "{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    finish(&dir);
}

/// `scripts/install` into a temporary prefix: `shmshim run` finds the library with
/// an empty environment, and system-wide use through /etc/ld.so.preload works —
/// tried in a private mount namespace with /etc overlaid, so the machine's own
/// file is never touched — with the server (the shmshim binary, which then
/// loads the library too) not served by itself.
#[test]
fn install_and_ld_so_preload() {
    let (probe, nosysv) = setup();
    let base = tempdir("install");
    std::fs::create_dir_all(&base).unwrap();
    let prefix = base.join("prefix");
    let st = Command::new(root().join("scripts/install")).arg(&prefix).output().unwrap();
    assert!(st.status.success(), "scripts/install: {}", String::from_utf8_lossy(&st.stderr));
    let bin = prefix.join("bin/shmshim");
    assert!(bin.is_file() && prefix.join("lib/libshmshim.so").is_file());
    // From another directory, with nothing in the environment: the default
    // namespace, of a fresh IPC namespace so that the machine's own stays
    // untouched (and removed afterwards, its server first).
    let script = format!(
        r#"{bin} sandbox --shim -- {probe} create 0x61 || exit 1
{bin} run -- {probe} rm 0x61 >/dev/null || exit 2
d=/dev/shm/shmshim-0-ipc$(stat -L -c %i /proc/self/ns/ipc)
[ -d "$d" ] || d=/tmp/shmshim-0-ipc$(stat -L -c %i /proc/self/ns/ipc)
pkill -f "serve --daemon --dir $d\$" ; sleep 0.2; rm -rf "$d""#,
        bin = bin.display(),
        probe = probe.display()
    );
    let o = run(Command::new("unshare").args(["--ipc", "env", "-i", "sh", "-c", &script]).current_dir("/"));
    assert!(o.status.success(), "{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    let id: i32 = text(&o).trim().parse().unwrap_or_else(|_| panic!("{}", text(&o)));
    assert!(id >= 0);

    // System-wide: only /etc/ld.so.preload names the library.
    assert_eq!(unsafe_free_geteuid(), 0, "this test needs root (a mount namespace)");
    let ns = base.join("ns");
    let script = format!(
        r#"set -e
mkdir -p {b}/up {b}/work
mount -t overlay overlay -o lowerdir=/etc,upperdir={b}/up,workdir={b}/work /etc
echo {lib} > /etc/ld.so.preload
export SHMSHIM_DIR={ns}
{nosysv} {probe} create 0x62
{nosysv} {probe} find 0x62
{bin} ls
{nosysv} {probe} rm 0x62
"#,
        b = base.display(),
        lib = prefix.join("lib/libshmshim.so").display(),
        ns = ns.display(),
        nosysv = nosysv.display(),
        probe = probe.display(),
        bin = bin.display()
    );
    let o = run(Command::new("unshare").args(["--mount", "--propagation", "private", "env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", &script]));
    let t = text(&o);
    assert!(o.status.success(), "{t}{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = t.lines().collect();
    let id: i32 = lines[0].trim().parse().unwrap_or_else(|_| panic!("{t}"));
    assert_eq!(lines[1], format!("{id} 0"), "{t}");
    assert!(t.contains("0x00000062"), "shmshim ls lists the segment: {t}");
    // The machine's own file is as it was.
    assert!(!std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default().contains(&*prefix.to_string_lossy()));
    finish(&ns);
    let _ = std::fs::remove_dir_all(&base);
}

fn unsafe_free_geteuid() -> u32 {
    shmshim_core::sys::geteuid()
}
