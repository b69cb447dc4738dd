/* common.h — helpers shared by the differential C tests.
 *
 * Every test prints what it observes, one line per check, and the runner
 * (scripts/test) compares the output of a native run (the kernel is the oracle)
 * with a run under the shim.  Anything that differs between two runs for
 * reasons unrelated to SysV semantics must be normalised here:
 *   - errno values are printed by name (errname);
 *   - pids are printed as self/parent/child names (pidname);
 *   - times are printed as 0, now (within 5 s of time(NULL)) or raw (tname);
 *   - addresses are never printed raw, only relations (addr_desc).
 * Ids and keys are printed raw: every run starts in a fresh namespace.
 */
#ifndef SHMSHIM_CTEST_COMMON_H
#define SHMSHIM_CTEST_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define FAILED ((void *)-1)

/* ---------- output ---------- */

__attribute__((constructor)) static void common_init_stdout(void)
{
    /* Line buffered even into a pipe or file, so that forked children never
     * inherit unflushed output and lines appear in program order. */
    setvbuf(stdout, NULL, _IOLBF, 0);
}

__attribute__((format(printf, 1, 2), unused)) static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---------- errno names ---------- */

static const char *errname(int e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case ERANGE: return "ERANGE";
    case EDEADLK: return "EDEADLK";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EIDRM: return "EIDRM";
    case ENOTSUP: return "ENOTSUP";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ENOTSOCK: return "ENOTSOCK";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E#%d", e);
        return buf;
    }
    }
}

/* Print "S.. expr = value" or "S.. expr = -1 ENAME" for an int/long-returning call. */
__attribute__((unused)) static long report(const char *s, const char *what, long r, int e)
{
    if (r == -1)
        out("%s %s = -1 %s", s, what, errname(e));
    else
        out("%s %s = %ld", s, what, r);
    return r;
}

/* T("S32", shmget(K, 0, 0)) prints "S32 shmget(K, 0, 0) = -1 ENOENT" and
 * evaluates to the result. */
#define T(s, expr)                                                        \
    ({                                                                    \
        errno = 0;                                                        \
        long _r = (long)(expr);                                           \
        int _e = errno;                                                   \
        report((s), #expr, _r, _e);                                       \
        errno = _e;                                                       \
        _r;                                                               \
    })

/* Same, with an explicit label instead of the expression text. */
#define TL(s, label, expr)                                                \
    ({                                                                    \
        errno = 0;                                                        \
        long _r = (long)(expr);                                           \
        int _e = errno;                                                   \
        report((s), (label), _r, _e);                                     \
        errno = _e;                                                       \
        _r;                                                               \
    })

/* Abort the test loudly (non-zero exit) when a set-up step fails. */
#define MUST(expr)                                                        \
    ({                                                                    \
        errno = 0;                                                        \
        long _r = (long)(expr);                                           \
        if (_r == -1) {                                                   \
            out("FATAL %s:%d %s = -1 %s", __FILE__, __LINE__, #expr,      \
                errname(errno));                                          \
            exit(99);                                                     \
        }                                                                 \
        _r;                                                               \
    })

#define MUSTP(expr)                                                       \
    ({                                                                    \
        errno = 0;                                                        \
        void *_p = (void *)(expr);                                        \
        if (_p == FAILED || _p == NULL) {                                 \
            out("FATAL %s:%d %s failed %s", __FILE__, __LINE__, #expr,    \
                errname(errno));                                          \
            exit(99);                                                     \
        }                                                                 \
        _p;                                                               \
    })

/* ---------- pids ---------- */

#define MAX_NAMED_PIDS 64
static pid_t named_pid[MAX_NAMED_PIDS];
static const char *named_pid_name[MAX_NAMED_PIDS];
static int named_pids;

__attribute__((unused)) static void name_pid(pid_t p, const char *name)
{
    if (named_pids < MAX_NAMED_PIDS) {
        named_pid[named_pids] = p;
        named_pid_name[named_pids] = name;
        named_pids++;
    }
}

__attribute__((unused)) static const char *pidname(pid_t p)
{
    if (p == 0) return "0";
    if (p == getpid()) return "self";
    for (int i = named_pids - 1; i >= 0; i--)
        if (named_pid[i] == p) return named_pid_name[i];
    if (p == getppid()) return "parent";
    return "other";
}

/* ---------- times ---------- */

__attribute__((unused)) static const char *tname(time_t t)
{
    static char buf[4][32];
    static int k;
    char *b = buf[k++ & 3];
    time_t now = time(NULL);
    if (t == 0) return "0";
    if (t >= now - 5 && t <= now + 5) return "now";
    snprintf(b, 32, "%lld", (long long)t);
    return b;
}

/* Wait until the wall-clock second changes, so that a later time stamp can be
 * compared with an earlier one. */
__attribute__((unused)) static void next_second(void)
{
    time_t t0 = time(NULL);
    while (time(NULL) == t0)
        usleep(20000);
}

/* ---------- addresses ---------- */

__attribute__((unused)) static const char *addr_desc(const void *p, const void *want)
{
    static char buf[4][64];
    static int k;
    char *b = buf[k++ & 3];
    if (p == FAILED) {
        snprintf(b, 64, "-1 %s", errname(errno));
        return b;
    }
    if (p == NULL) return "NULL";
    if (want && p == want) return "requested";
    snprintf(b, 64, "%s", ((uintptr_t)p % PAGE) ? "unaligned" : "page-aligned");
    return b;
}

/* A("S56", shmat(id, want, 0), want) prints "S56 shmat(id, want, 0) = requested"
 * (or page-aligned / -1 EINVAL) and evaluates to the address. */
#define A(s, expr, want)                                                  \
    ({                                                                    \
        errno = 0;                                                        \
        void *_p = (void *)(expr);                                        \
        int _e = errno;                                                   \
        errno = _e;                                                       \
        out("%s %s = %s", (s), #expr, addr_desc(_p, (want)));             \
        errno = _e;                                                       \
        _p;                                                               \
    })

/* Reserve a free, page-aligned region of npages pages and return its address
 * with nothing mapped there (for fixed-address attaches).  Guard pages
 * (PROT_NONE) of one page stay mapped on both sides so that nothing else
 * lands right next to it and an access past the end faults. */
__attribute__((unused)) static char *free_region(size_t npages)
{
    char *r = mmap(NULL, (npages + 2) * PAGE, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        out("FATAL free_region mmap %s", errname(errno));
        exit(99);
    }
    munmap(r + PAGE, npages * PAGE);
    return r + PAGE;
}

/* Release the guard pages around a region returned by free_region. */
__attribute__((unused)) static void free_region_release(char *p, size_t npages)
{
    munmap(p - PAGE, PAGE);
    munmap(p + npages * PAGE, PAGE);
}

/* An address that is surely not mapped: a freshly unmapped 16-page hole. */
__attribute__((unused)) static void *unmapped_addr(void)
{
    char *r = mmap(NULL, 16 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) {
        out("FATAL unmapped_addr mmap %s", errname(errno));
        exit(99);
    }
    munmap(r, 16 * PAGE);
    return r + 8 * PAGE;
}

/* Describe the mapping that contains p from /proc/self/maps:
 * "perms=rw-s start=+0 pages=2" (start relative to p, in pages), or "unmapped". */
__attribute__((unused)) static const char *map_desc(const void *p)
{
    static char res[128];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return "maps?";
    char line[512];
    snprintf(res, sizeof res, "unmapped");
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
        if ((uintptr_t)p >= lo && (uintptr_t)p < hi) {
            snprintf(res, sizeof res, "perms=%s start=%+ld pages=%lu", perms,
                     ((long)lo - (long)(uintptr_t)p) / (long)PAGE, (hi - lo) / PAGE);
            break;
        }
    }
    fclose(f);
    return res;
}

/* ---------- fault probes ---------- */

static sigjmp_buf probe_env;
static volatile sig_atomic_t probe_sig;

static void probe_handler(int sig)
{
    probe_sig = sig;
    siglongjmp(probe_env, 1);
}

static void probe_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = probe_handler;
    sa.sa_flags = SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

static void probe_restore(void)
{
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
}

/* Prints "LABEL: nattch=N" (or the IPC_STAT error) for segment id. */
__attribute__((unused)) static void show_nattch(const char *label, int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1)
        out("%s: IPC_STAT = -1 %s", label, errname(errno));
    else
        out("%s: nattch=%lu", label, (unsigned long)d.shm_nattch);
}

/* Returns "ok:<byte>" / "SIGSEGV" / "SIGBUS". */
__attribute__((unused)) static const char *probe_read(const volatile char *p)
{
    static char buf[32];
    probe_install();
    probe_sig = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        unsigned char c = (unsigned char)*p;
        probe_restore();
        snprintf(buf, sizeof buf, "ok:%02x", c);
        return buf;
    }
    probe_restore();
    return probe_sig == SIGSEGV ? "SIGSEGV" : probe_sig == SIGBUS ? "SIGBUS" : "SIG?";
}

__attribute__((unused)) static const char *probe_write(volatile char *p, char v)
{
    probe_install();
    probe_sig = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        *p = v;
        probe_restore();
        return "ok";
    }
    probe_restore();
    return probe_sig == SIGSEGV ? "SIGSEGV" : probe_sig == SIGBUS ? "SIGBUS" : "SIG?";
}

/* Executes a tiny "mov eax, 42; ret" written at p (p must be writable through
 * some other mapping w, or be w itself).  Returns "ok:42" or a signal name. */
__attribute__((unused)) static const char *probe_exec(void *p)
{
    static char buf[32];
    probe_install();
    probe_sig = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        int (*fn)(void) = (int (*)(void))p;
        int v = fn();
        probe_restore();
        snprintf(buf, sizeof buf, "ok:%d", v);
        return buf;
    }
    probe_restore();
    return probe_sig == SIGSEGV ? "SIGSEGV" : probe_sig == SIGBUS ? "SIGBUS" : "SIG?";
}

__attribute__((unused)) static void put_ret42(volatile unsigned char *w)
{
    static const unsigned char code[] = {0xb8, 42, 0, 0, 0, 0xc3};
    for (unsigned i = 0; i < sizeof code; i++)
        w[i] = code[i];
}

/* ---------- shmid_ds helpers ---------- */

/* Fill with a pattern so that untouched fields are noticed. */
__attribute__((unused)) static void poison(void *p, size_t n)
{
    memset(p, 0xA5, n);
}

__attribute__((unused)) static void print_ds(const char *s, const char *label,
                                             const struct shmid_ds *d)
{
    out("%s %s: key=%d uid=%u gid=%u cuid=%u cgid=%u mode=%04o seq=%u pad2=%u"
        " res1=%lu res2=%lu segsz=%zu atime=%s dtime=%s ctime=%s cpid=%s lpid=%s"
        " nattch=%lu res5=%lu res6=%lu",
        s, label, d->shm_perm.__key, d->shm_perm.uid, d->shm_perm.gid,
        d->shm_perm.cuid, d->shm_perm.cgid, d->shm_perm.mode, d->shm_perm.__seq,
        d->shm_perm.__pad2, d->shm_perm.__glibc_reserved1,
        d->shm_perm.__glibc_reserved2, d->shm_segsz, tname(d->shm_atime),
        tname(d->shm_dtime), tname(d->shm_ctime), pidname(d->shm_cpid),
        pidname(d->shm_lpid), (unsigned long)d->shm_nattch, d->__glibc_reserved5,
        d->__glibc_reserved6);
}

/* IPC_STAT and print everything (or the error). */
__attribute__((unused)) static int stat_print(const char *s, const char *label, int id)
{
    struct shmid_ds d;
    poison(&d, sizeof d);
    errno = 0;
    int r = shmctl(id, IPC_STAT, &d);
    if (r == -1) {
        out("%s %s: IPC_STAT = -1 %s", s, label, errname(errno));
        return -1;
    }
    print_ds(s, label, &d);
    return 0;
}

/* IPC_STAT and print a few chosen fields compactly. */
__attribute__((unused)) static void stat_short(const char *s, const char *label, int id)
{
    struct shmid_ds d;
    poison(&d, sizeof d);
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        out("%s %s: IPC_STAT = -1 %s", s, label, errname(errno));
        return;
    }
    out("%s %s: key=%d mode=%04o nattch=%lu lpid=%s atime=%s dtime=%s", s, label,
        d.shm_perm.__key, d.shm_perm.mode, (unsigned long)d.shm_nattch,
        pidname(d.shm_lpid), tname(d.shm_atime), tname(d.shm_dtime));
}

/* nattch or -1 (errno set) */
__attribute__((unused)) static long nattch(int id)
{
    struct shmid_ds d;
    if (shmctl(id, IPC_STAT, &d) == -1) return -1;
    return (long)d.shm_nattch;
}

__attribute__((unused)) static void print_nattch(const char *s, const char *label, int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1)
        out("%s nattch %s = -1 %s", s, label, errname(errno));
    else
        out("%s nattch %s = %lu", s, label, (unsigned long)d.shm_nattch);
}

/* SHM_INFO and print the counters that are deterministic. */
__attribute__((unused)) static void info_print(const char *s, const char *label)
{
    struct shm_info si;
    poison(&si, sizeof si);
    errno = 0;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r == -1) {
        out("%s %s: SHM_INFO = -1 %s", s, label, errname(errno));
        return;
    }
    out("%s %s: SHM_INFO = %d used_ids=%d shm_tot=%lu swap_attempts=%lu swap_successes=%lu",
        s, label, r, si.used_ids, si.shm_tot, si.swap_attempts, si.swap_successes);
}

/* Remove a segment, printing only on failure (cleanup). */
__attribute__((unused)) static void rmid(int id)
{
    if (id >= 0 && shmctl(id, IPC_RMID, NULL) == -1)
        out("cleanup IPC_RMID(%d) = -1 %s", id, errname(errno));
}

/* ---------- processes and credentials ---------- */

/* Drop to uid/gid with the given supplementary groups.  As root this clears
 * every capability. */
__attribute__((unused)) static void become(uid_t uid, gid_t gid, int ngroups, const gid_t *groups)
{
    if (setgroups(ngroups, groups) == -1 || setresgid(gid, gid, gid) == -1 ||
        setresuid(uid, uid, uid) == -1) {
        out("FATAL become(%u,%u) %s", uid, gid, errname(errno));
        exit(98);
    }
}

/* Wait for a child and print how it ended if that was not exit(0). */
__attribute__((unused)) static int reap(pid_t pid, const char *name)
{
    int st;
    if (waitpid(pid, &st, 0) != pid) {
        out("FATAL waitpid(%s) %s", name, errname(errno));
        exit(97);
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    if (WIFEXITED(st))
        out("%s exited %d", name, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        out("%s killed by signal %d", name, WTERMSIG(st));
    return st;
}

/* Run fn(arg) in a forked child, wait for it.  Output stays ordered because
 * stdout is line buffered and the parent waits. */
__attribute__((unused)) static int in_child(const char *name, void (*fn)(void *), void *arg)
{
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) {
        out("FATAL fork %s", errname(errno));
        exit(97);
    }
    if (p == 0) {
        fn(arg);
        fflush(stdout);
        exit(0);
    }
    name_pid(p, name);
    return reap(p, name);
}

/* A few ints shared with forked children (anonymous MAP_SHARED memory).
 * Call it once before forking. */
__attribute__((unused)) static int *shared_ints(void)
{
    static int *p;
    if (!p) {
        p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            out("FATAL shared_ints %s", errname(errno));
            exit(97);
        }
    }
    return p;
}

/* A one-byte pipe handshake between parent and child. */
struct sync2 {
    int p2c[2];
    int c2p[2];
};

__attribute__((unused)) static void sync_init(struct sync2 *s)
{
    if (pipe(s->p2c) || pipe(s->c2p)) {
        out("FATAL pipe");
        exit(97);
    }
}

__attribute__((unused)) static void sync_send(int fd)
{
    char c = 'x';
    if (write(fd, &c, 1) != 1) {
        out("FATAL sync write");
        exit(97);
    }
}

__attribute__((unused)) static void sync_wait(int fd)
{
    char c;
    ssize_t n;
    do
        n = read(fd, &c, 1);
    while (n == -1 && errno == EINTR);
    if (n != 1) {
        out("FATAL sync read");
        exit(97);
    }
}


/* Prints runs of consecutive ids compactly: "ids 4..63 (60)". */
__attribute__((unused)) static void print_ranges(const char *s, const int *v, int n)
{
    int i = 0;
    while (i < n) {
        int j = i;
        while (j + 1 < n && v[j + 1] == v[j] + 1)
            j++;
        if (j == i)
            out("%s ids %d", s, v[i]);
        else
            out("%s ids %d..%d (%d)", s, v[i], v[j], j - i + 1);
        i = j + 1;
    }
}

/* One line of a segment's attach state: nattch, lpid, atime, dtime, mode. */
__attribute__((unused)) static void show_segment(const char *s, const char *label, int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        out("%s %s: IPC_STAT = -1 %s", s, label, errname(errno));
        return;
    }
    out("%s %s: nattch=%lu lpid=%s atime=%s dtime=%s mode=%04o", s, label,
        (unsigned long)d.shm_nattch, pidname(d.shm_lpid), tname(d.shm_atime),
        tname(d.shm_dtime), d.shm_perm.mode);
}

#endif
