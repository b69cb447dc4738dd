/*
 * shmbench — System V shared memory micro-benchmarks, native vs. shmshim.
 *
 * One binary, three modes:
 *
 *   shmbench coord --lib LIB --dir DIR [--json FILE] [--batches N] [--quick]
 *       The coordinator. Starts eight workers, native and shim for each of
 *       N = 1, 64, 1024, 4096 segments in the namespace, and drives them batch
 *       by batch in rotating order, so that machine noise hits all of them:
 *         native: unshare --ipc SELF worker native
 *         shim:   unshare --ipc env SHMSHIM_DIR=DIR/nN SHMSHIM_SHMMNI=32768
 *                     SHMSHIM_MODE=emulate LD_PRELOAD=LIB SELF worker shim
 *       (the shim worker gets a private kernel IPC namespace too, so a shim that
 *       failed to intercept could not leak segments into the host's, and so the
 *       worker can prove interception: the kernel must not know its key.)
 *       Prints the table on stdout and writes FILE (JSON). Exit 0 unless an
 *       error occurred (targets that are missed do not fail the run).
 *
 *   shmbench worker native|shim
 *       Reads one command per line on stdin, answers one line on stdout.
 *
 *   shmbench ops OP COUNT
 *       Runs OP COUNT times on one fresh segment and exits (for strace -c:
 *       the difference between two COUNTs gives syscalls per operation).
 *       OP: lookup stat attach create bw cycle
 *
 * Timing: clock_gettime(CLOCK_MONOTONIC); each figure is the median of
 * per-batch per-call times, after a calibration/warm-up pass that sizes the
 * batches (~15 ms each).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_MAIN 0x5b4e0001
#define KEY_CONC 0x5b4e0002
#define KEY_EXTRA 0x5b500000 /* + i */
#define SEG_SIZE 4096
#define BW_SIZE (64UL << 20)
#define MAX_SEGS 4096
#define SHMMNI_BENCH 32768

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "shmbench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* ================================================================== worker */

static const char *w_mode = "native";
static int main_id = -1;
static int extra_ids[MAX_SEGS];
static int n_extra;
static int bw_id = -1;

enum op { OP_LOOKUP, OP_STAT, OP_ATTACH, OP_CREATE, OP_N, OP_SHMSTAT = OP_N, OP_ROTATE, OP_ALL };
static const char *op_names[OP_ALL] = {"lookup", "stat", "attach", "create", "shmstat", "rotate"};

static int op_parse(const char *s)
{
    for (int i = 0; i < OP_ALL; i++)
        if (strcmp(s, op_names[i]) == 0)
            return i;
    return -1;
}

/* Working set of OP_ROTATE: shmat+touch+shmdt going round the first rot_w
 * segments of the namespace (main, then the extra ones). */
static int rot_w = 1;
static long rot_i;

/* Other processes holding the main segment attached (command "attachers"). */
static pid_t att_pids[1024];
static int n_att;
static int att_pipe = -1;

/* shmat + touch one byte + shmdt; returns the number of failed calls. */
static long attach_touch_detach(int id)
{
    volatile unsigned char *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        return 1;
    p[0]++;
    return shmdt((const void *)p) != 0;
}

/* Each returns the number of failed calls. */
static long run_op(int op, long iters)
{
    long err = 0;
    struct shmid_ds ds;
    switch (op) {
    case OP_LOOKUP:
        for (long i = 0; i < iters; i++)
            if (shmget(KEY_MAIN, 0, 0) != main_id)
                err++;
        break;
    case OP_STAT:
        for (long i = 0; i < iters; i++)
            if (shmctl(main_id, IPC_STAT, &ds) != 0)
                err++;
        break;
    case OP_ATTACH:
        for (long i = 0; i < iters; i++)
            err += attach_touch_detach(main_id);
        break;
    case OP_CREATE:
        for (long i = 0; i < iters; i++) {
            int id = shmget(IPC_PRIVATE, SEG_SIZE, IPC_CREAT | 0600);
            if (id < 0) {
                err++;
                continue;
            }
            if (shmctl(id, IPC_RMID, NULL) != 0)
                err++;
        }
        break;
    case OP_SHMSTAT:
        /* SHM_STAT takes the index (the id modulo IPCMNI) and returns the id */
        for (long i = 0; i < iters; i++)
            if (shmctl(main_id % 32768, SHM_STAT, &ds) != main_id)
                err++;
        break;
    case OP_ROTATE:
        for (long i = 0; i < iters; i++) {
            long k = rot_i++ % rot_w;
            err += attach_touch_detach(k == 0 ? main_id : extra_ids[k - 1]);
        }
        break;
    }
    return err;
}

/* Ends the attached processes of "attachers": they exit without shmdt (their
 * exit detaches them, as any process's does). Returns errors. */
static long release_attachers(void)
{
    long err = 0;
    if (att_pipe >= 0)
        close(att_pipe);
    att_pipe = -1;
    for (int i = 0; i < n_att; i++) {
        int st;
        if (waitpid(att_pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            err++;
    }
    n_att = 0;
    return err;
}

/* K processes attach the main segment and wait; answers "ok ERRORS NATTCH". */
static void attachers(int k)
{
    long err = release_attachers();
    int ready[2], hold[2];
    if (k > (int)(sizeof att_pids / sizeof att_pids[0]) || pipe(ready) || pipe(hold)) {
        printf("err attachers %d\n", k);
        return;
    }
    for (int i = 0; i < k; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            err++;
            break;
        }
        if (pid == 0) {
            close(ready[0]);
            close(hold[1]);
            void *p = shmat(main_id, NULL, 0);
            char c = p == (void *)-1 ? 'x' : 'r';
            if (write(ready[1], &c, 1) != 1)
                _exit(1);
            while (read(hold[0], &c, 1) < 0 && errno == EINTR)
                ;
            _exit(p == (void *)-1);
        }
        att_pids[n_att++] = pid;
    }
    close(ready[1]);
    close(hold[0]);
    att_pipe = hold[1];
    for (int i = 0; i < n_att; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1 || c != 'r')
            err++;
    }
    close(ready[0]);
    struct shmid_ds ds;
    long nattch = shmctl(main_id, IPC_STAT, &ds) == 0 ? (long)ds.shm_nattch : -1;
    if (nattch != n_att)
        err++;
    printf("ok %ld %ld\n", err, nattch);
}

static long read_status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static void registry_stat(long long *size, long long *alloc)
{
    const char *dir = getenv("SHMSHIM_DIR");
    char path[PATH_MAX];
    struct stat st;
    *size = *alloc = -1;
    if (!dir)
        return;
    snprintf(path, sizeof path, "%s/registry", dir);
    if (stat(path, &st) == 0) {
        *size = st.st_size;
        *alloc = (long long)st.st_blocks * 512;
    }
}

static int used_ids(void)
{
    struct shm_info info;
    memset(&info, 0, sizeof info);
    if (shmctl(0, SHM_INFO, (struct shmid_ds *)&info) < 0)
        return -1;
    return info.used_ids;
}

/* One 64 MiB attach + full write + detach; returns ns, or 0 on error. */
static uint64_t bw_once(int fresh, int fill)
{
    int id = bw_id;
    if (fresh) {
        id = shmget(IPC_PRIVATE, BW_SIZE, IPC_CREAT | 0600);
        if (id < 0)
            return 0;
    } else if (id < 0) {
        id = bw_id = shmget(IPC_PRIVATE, BW_SIZE, IPC_CREAT | 0600);
        if (id < 0)
            return 0;
    }
    uint64_t t0 = now_ns();
    void *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        return 0;
    memset(p, fill, BW_SIZE);
    __asm__ __volatile__("" ::"r"(p) : "memory");
    int r = shmdt(p);
    uint64_t t1 = now_ns();
    if (fresh)
        r |= shmctl(id, IPC_RMID, NULL);
    return r == 0 ? t1 - t0 : 0;
}

/* One concurrency cycle on segment key KEY_CONC: lookup, IPC_STAT, attach,
 * atomic increment of the counter at offset 0, detach. Returns errors. */
static int cycle(int inc)
{
    struct shmid_ds ds;
    int e = 0;
    int id = shmget(KEY_CONC, 0, 0);
    if (id < 0)
        return 1;
    if (shmctl(id, IPC_STAT, &ds) != 0)
        e++;
    uint64_t *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        return e + 1;
    if (inc)
        __atomic_fetch_add(p, 1, __ATOMIC_SEQ_CST);
    if (shmdt(p) != 0)
        e++;
    return e;
}

/* P processes at once, C cycles each. Prints "ok ns errors counter". */
static void conc(int P, long C)
{
    int id = shmget(KEY_CONC, SEG_SIZE, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0) {
        printf("err shmget(KEY_CONC): %s\n", strerror(errno));
        return;
    }
    int ready[2], go[2];
    if (pipe(ready) || pipe(go))
        die("pipe: %s", strerror(errno));
    pid_t pids[64];
    for (int i = 0; i < P; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            close(ready[0]);
            close(go[1]);
            int e = cycle(0); /* warm up: per-process first-call costs */
            char c = 'r';
            if (write(ready[1], &c, 1) != 1)
                _exit(255);
            while (read(go[0], &c, 1) < 0 && errno == EINTR)
                ;
            for (long k = 0; k < C; k++)
                e += cycle(1);
            _exit(e > 250 ? 250 : e);
        }
        pids[i] = pid;
    }
    close(ready[1]);
    close(go[0]);
    for (int i = 0; i < P; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1)
            break;
    }
    uint64_t t0 = now_ns();
    close(go[1]);
    long errors = 0;
    for (int i = 0; i < P; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st))
            errors += 1000;
        else
            errors += WEXITSTATUS(st);
    }
    uint64_t t1 = now_ns();
    close(ready[0]);
    uint64_t counter = (uint64_t)-1;
    uint64_t *p = shmat(id, NULL, 0);
    if (p != (void *)-1) {
        counter = __atomic_load_n(p, __ATOMIC_SEQ_CST);
        shmdt(p);
    } else
        errors++;
    if (shmctl(id, IPC_RMID, NULL) != 0)
        errors++;
    printf("ok %llu %ld %llu\n", (unsigned long long)(t1 - t0), errors, (unsigned long long)counter);
}

static void setup(int n)
{
    long err = 0;
    while (n_extra < n - 1 && n_extra < MAX_SEGS) {
        int id = shmget(KEY_EXTRA + n_extra, SEG_SIZE, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) {
            printf("err creating segment %d: %s\n", n_extra + 2, strerror(errno));
            return;
        }
        extra_ids[n_extra++] = id;
    }
    printf("ok %ld %d\n", err, used_ids());
}

/* Attach every segment (untouched), read VmRSS, detach. */
static void attach_all(void)
{
    static void *addrs[MAX_SEGS + 1];
    int n = 0;
    long err = 0;
    addrs[n] = shmat(main_id, NULL, 0);
    if (addrs[n] == (void *)-1)
        err++;
    else
        n++;
    for (int i = 0; i < n_extra; i++) {
        addrs[n] = shmat(extra_ids[i], NULL, 0);
        if (addrs[n] == (void *)-1) {
            if (!err)
                fprintf(stderr, "shmbench[%s]: shmat of segment %d: %s\n", w_mode, i + 2, strerror(errno));
            err++;
        } else
            n++;
    }
    long rss = read_status_kb("VmRSS");
    for (int i = 0; i < n; i++)
        if (shmdt(addrs[i]) != 0)
            err++;
    printf("ok %ld %ld %d\n", rss, err, n);
}

static void cleanup(void)
{
    long err = 0;
    for (int i = 0; i < n_extra; i++)
        if (shmctl(extra_ids[i], IPC_RMID, NULL) != 0)
            err++;
    n_extra = 0;
    if (bw_id >= 0 && shmctl(bw_id, IPC_RMID, NULL) != 0)
        err++;
    bw_id = -1;
    if (main_id >= 0 && shmctl(main_id, IPC_RMID, NULL) != 0)
        err++;
    main_id = -1;
    printf("ok %ld %d\n", err, used_ids());
}

/* A raw system call that no LD_PRELOAD library can intercept (the shim also
 * hooks libc's syscall()). Returns -errno on failure, like the kernel. */
static long raw_syscall3(long n, long a, long b, long c)
{
#if defined(__x86_64__)
    long r;
    __asm__ __volatile__("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ __volatile__("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
#else
    (void)n, (void)a, (void)b, (void)c;
    return -ENOSYS;
#endif
}

static int worker_init(void)
{
    int shim = strcmp(w_mode, "shim") == 0;
    if (!shim) {
        /* The namespace is private (unshare --ipc): raise its shmmni like
         * SHMSHIM_SHMMNI does for the shim, so 4096 segments + 1 fit. */
        int fd = open("/proc/sys/kernel/shmmni", O_WRONLY);
        if (fd < 0 || dprintf(fd, "%d\n", SHMMNI_BENCH) < 0)
            fprintf(stderr, "shmbench[native]: cannot raise shmmni: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (used_ids() != 0) {
        printf("err namespace not empty at start (%d segments)\n", used_ids());
        return -1;
    }
    main_id = shmget(KEY_MAIN, SEG_SIZE, IPC_CREAT | IPC_EXCL | 0600);
    if (main_id < 0) {
        printf("err shmget(KEY_MAIN): %s\n", strerror(errno));
        return -1;
    }
    /* Prove who answered: the kernel (private namespace) knows the key only
     * natively; the shim must have created its registry. */
    long k = raw_syscall3(SYS_shmget, KEY_MAIN, 0, 0);
    long long rs, ra;
    registry_stat(&rs, &ra);
    if (shim && (k >= 0 || rs < 0)) {
        printf("err the shim did not answer (kernel shmget -> %ld, registry size %lld)\n", k, rs);
        shmctl(main_id, IPC_RMID, NULL);
        return -1;
    }
    if (!shim && k != main_id && k != -ENOSYS) {
        printf("err native: kernel shmget -> %ld, libc -> %d\n", k, main_id);
        shmctl(main_id, IPC_RMID, NULL);
        return -1;
    }
    printf("ok %d\n", main_id);
    return 0;
}

static int worker(const char *mode)
{
    char line[256];
    w_mode = mode;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_DFL);
    int cleaned = 0;
    if (worker_init() < 0)
        return 1;
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "", arg[32] = "";
        long a = 0, b = 0;
        sscanf(line, "%31s", cmd);
        if (strcmp(cmd, "calib") == 0) {
            /* warm up >= 20 ms and >= 20 calls; answer ns per call of the
             * last chunk */
            sscanf(line, "%*s %31s", arg);
            int op = op_parse(arg);
            long n = 4, err = 0;
            uint64_t dt = 0, total = 0, t0;
            for (;;) {
                t0 = now_ns();
                err += run_op(op, n);
                dt = now_ns() - t0;
                total += dt;
                if (total >= 20000000 && n >= 20)
                    break;
                n *= 2;
            }
            printf("ok %.3f %ld\n", (double)dt / n, err);
        } else if (strcmp(cmd, "batch") == 0) {
            sscanf(line, "%*s %31s %ld", arg, &a);
            int op = op_parse(arg);
            uint64_t t0 = now_ns();
            long err = run_op(op, a);
            uint64_t t1 = now_ns();
            printf("ok %llu %ld\n", (unsigned long long)(t1 - t0), err);
        } else if (strcmp(cmd, "setup") == 0) {
            sscanf(line, "%*s %ld", &a);
            setup((int)a);
        } else if (strcmp(cmd, "mem") == 0) {
            long long rs, ra;
            registry_stat(&rs, &ra);
            printf("ok %ld %lld %lld\n", read_status_kb("VmRSS"), rs, ra);
        } else if (strcmp(cmd, "attachall") == 0) {
            attach_all();
        } else if (strcmp(cmd, "bw") == 0) {
            sscanf(line, "%*s %31s %ld", arg, &a);
            uint64_t ns = bw_once(strcmp(arg, "fresh") == 0, (int)a);
            if (ns)
                printf("ok %llu\n", (unsigned long long)ns);
            else
                printf("err bw %s: %s\n", arg, strerror(errno));
        } else if (strcmp(cmd, "bwdone") == 0) {
            int r = 0;
            if (bw_id >= 0)
                r = shmctl(bw_id, IPC_RMID, NULL);
            bw_id = -1;
            printf("ok %d\n", r);
        } else if (strcmp(cmd, "conc") == 0) {
            sscanf(line, "%*s %ld %ld", &a, &b);
            conc((int)a, b);
        } else if (strcmp(cmd, "attachers") == 0) {
            sscanf(line, "%*s %ld", &a);
            attachers((int)a);
        } else if (strcmp(cmd, "rotate") == 0) {
            sscanf(line, "%*s %ld", &a);
            rot_w = a < 1 ? 1 : a > n_extra + 1 ? n_extra + 1 : (int)a;
            rot_i = 0;
            printf("ok %d\n", rot_w);
        } else if (strcmp(cmd, "cleanup") == 0) {
            release_attachers();
            cleanup();
            cleaned = 1;
        } else if (strcmp(cmd, "quit") == 0) {
            printf("ok\n");
            break;
        } else {
            printf("err unknown command %s\n", cmd);
        }
    }
    if (!cleaned) { /* coordinator gone: leave nothing behind */
        if (freopen("/dev/null", "w", stdout))
            cleanup();
    }
    return 0;
}

/* ============================================================ ops (strace) */

static int ops(const char *opname, long count)
{
    int rc = 0;
    main_id = shmget(KEY_MAIN, SEG_SIZE, IPC_CREAT | 0600);
    if (main_id < 0)
        die("shmget: %s", strerror(errno));
    long err = 0;
    if (strcmp(opname, "bw") == 0) {
        for (long i = 0; i < count; i++)
            if (!bw_once(0, (int)i))
                err++;
        if (bw_id >= 0)
            shmctl(bw_id, IPC_RMID, NULL);
    } else if (strcmp(opname, "cycle") == 0) {
        if (shmget(KEY_CONC, SEG_SIZE, IPC_CREAT | 0600) < 0)
            die("shmget: %s", strerror(errno));
        for (long i = 0; i < count; i++)
            err += cycle(1);
        shmctl(shmget(KEY_CONC, 0, 0), IPC_RMID, NULL);
    } else {
        int op = op_parse(opname);
        if (op < 0)
            die("unknown op %s", opname);
        err = run_op(op, count);
    }
    shmctl(main_id, IPC_RMID, NULL);
    if (err) {
        fprintf(stderr, "shmbench ops %s: %ld errors\n", opname, err);
        rc = 1;
    }
    return rc;
}

/* ============================================================= coordinator */

/* Eight workers: {native, shim} x {N = 1, 64, 1024, 4096}, each in its own
 * namespace holding N segments. A round runs one batch on each, in rotating
 * order, so machine noise hits every configuration alike (scaling ratios
 * compare workers measured in the same rounds, not minutes apart). */
#define NN 4
#define NW (2 * NN)
static const int Ns[NN] = {1, 64, 1024, 4096};
static const char *mode_names[2] = {"native", "shim"};

struct worker {
    char name[32];
    pid_t pid;
    FILE *in, *out;
    char reply[512];
};

static struct worker W[NW]; /* index: ni * 2 + mode (0 native, 1 shim) */
#define WK(ni, m) (&W[(ni) * 2 + (m)])

struct errlist {
    char msg[64][200];
    int n;
};
static struct errlist errs;

static void add_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errs.n < 64) {
        vsnprintf(errs.msg[errs.n], sizeof errs.msg[0], fmt, ap);
        fprintf(stderr, "shmbench: ERROR: %s\n", errs.msg[errs.n]);
    }
    errs.n++;
    va_end(ap);
}

static void start_worker(struct worker *w, char *const argv[])
{
    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) || pipe2(from, O_CLOEXEC))
        die("pipe: %s", strerror(errno));
    w->pid = fork();
    if (w->pid < 0)
        die("fork: %s", strerror(errno));
    if (w->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        execvp(argv[0], argv);
        fprintf(stderr, "shmbench: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    w->in = fdopen(to[1], "w");
    w->out = fdopen(from[0], "r");
}

/* Sends a command, waits for the answer; returns the text after "ok " or NULL
 * (error recorded). */
static const char *ask(struct worker *w, const char *fmt, ...)
{
    char cmd[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (fprintf(w->in, "%s\n", cmd) < 0 || fflush(w->in) != 0 || !fgets(w->reply, sizeof w->reply, w->out)) {
        die("%s worker died (command: %s)", w->name, cmd);
    }
    w->reply[strcspn(w->reply, "\n")] = 0;
    if (strncmp(w->reply, "ok", 2) == 0)
        return w->reply[2] ? w->reply + 3 : w->reply + 2;
    add_err("%s: %s -> %s", w->name, cmd, w->reply);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double t[256];
    if (n <= 0)
        return 0;
    memcpy(t, v, n * sizeof *v);
    qsort(t, n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* ---- results ---- */

enum tgt { T_NONE, T_LE, T_GE, T_CHECK };
struct row {
    char id[48];
    char label[64];
    char unit[16];
    double native, shim, ratio;
    enum tgt tk;
    double target;
    int judge_shim; /* judge the shim column instead of the ratio */
    int ok;         /* 1 ok, 0 miss, -1 no target, -2 FAIL (errors) */
    const double *samples[2];
    int nsamp;
};
static struct row rows[128];
static int nrows;

static struct row *add_row(const char *id, const char *label, const char *unit, double nat, double shim,
                           enum tgt tk, double target, int judge_shim)
{
    struct row *r = &rows[nrows++];
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->label, sizeof r->label, "%s", label);
    snprintf(r->unit, sizeof r->unit, "%s", unit);
    r->native = nat;
    r->shim = shim;
    r->ratio = nat > 0 ? shim / nat : 0;
    r->tk = tk;
    r->target = target;
    r->judge_shim = judge_shim;
    double v = judge_shim ? shim : r->ratio;
    r->ok = tk == T_LE ? v <= target : tk == T_GE ? v >= target : -1;
    return r;
}

static int batches = 15;
static double batch_target_ns = 15e6;
static double cost[NN][OP_N][2];           /* median ns/call */
static double cost_samp[NN][OP_N][2][64]; /* per-batch ns/call */
static long op_errors[NN][OP_N][2];

static const char *op_labels[OP_N] = {"shmget lookup", "shmctl IPC_STAT", "shmat+touch+shmdt", "create+IPC_RMID"};
static const double op_targets[OP_N] = {0.5, 0.5, 1.2, 1.5};

static void bench_op(int op)
{
    long iters[NW];
    for (int w = 0; w < NW; w++) {
        const char *r = ask(&W[w], "calib %s", op_names[op]);
        double per = r ? atof(r) : 1000;
        long it = per > 0 ? (long)(batch_target_ns / per) : 1000;
        /* a few thousand calls per batch for fast calls; at least 100, or
         * 20 for very slow ones (keeps the run under a few minutes) */
        long minit = per * 100 > 4 * batch_target_ns ? 20 : 100;
        if (it < minit)
            it = minit;
        if (it > 50000)
            it = 50000;
        iters[w] = it;
        if (r && strchr(r, ' ') && strtol(strchr(r, ' ') + 1, NULL, 10) != 0)
            add_err("%s: %s: errors during warm-up", W[w].name, op_names[op]);
    }
    for (int b = 0; b < batches; b++)
        for (int k = 0; k < NW; k++) {
            int w = (b + k) % NW; /* rotate who goes first */
            const char *r = ask(&W[w], "batch %s %ld", op_names[op], iters[w]);
            unsigned long long t = 0;
            long e = 0;
            if (r)
                sscanf(r, "%llu %ld", &t, &e);
            op_errors[w / 2][op][w % 2] += e;
            cost_samp[w / 2][op][w % 2][b] = (double)t / iters[w];
        }
    for (int w = 0; w < NW; w++) {
        int ni = w / 2, m = w % 2;
        cost[ni][op][m] = median(cost_samp[ni][op][m], batches);
        if (op_errors[ni][op][m])
            add_err("%s: %s: %ld failed calls", W[w].name, op_names[op], op_errors[ni][op][m]);
    }
    for (int ni = 0; ni < NN; ni++)
        fprintf(stderr, "  %-18s N=%-5d native %10.1f  shim %10.1f  ns/call  (batches of %ld / %ld calls)\n",
                op_labels[op], Ns[ni], cost[ni][op][0], cost[ni][op][1], iters[ni * 2], iters[ni * 2 + 1]);
}

/* Median ns/call of OP in a native and a shim worker, their batches
 * alternating (who goes first rotates). */
static void measure_pair(struct worker *wn, struct worker *ws, int op, double out[2], double samp[2][64], long errs[2])
{
    struct worker *wk[2] = {wn, ws};
    long iters[2];
    for (int m = 0; m < 2; m++) {
        const char *r = ask(wk[m], "calib %s", op_names[op]);
        double per = r ? atof(r) : 1000;
        long it = per > 0 ? (long)(batch_target_ns / per) : 1000;
        iters[m] = it < 100 ? 100 : it > 50000 ? 50000 : it;
        errs[m] = 0;
    }
    for (int b = 0; b < batches; b++)
        for (int k = 0; k < 2; k++) {
            int m = (b + k) % 2;
            const char *r = ask(wk[m], "batch %s %ld", op_names[op], iters[m]);
            unsigned long long t = 0;
            long e = 0;
            if (r)
                sscanf(r, "%llu %ld", &t, &e);
            errs[m] += e;
            samp[m][b] = (double)t / iters[m];
        }
    for (int m = 0; m < 2; m++) {
        out[m] = median(samp[m], batches);
        if (errs[m])
            add_err("%s: %s: %ld failed calls", wk[m]->name, op_names[op], errs[m]);
    }
}

/* Costs with K other processes attached to the measured segment. */
static const int Ks[4] = {0, 10, 100, 400};
static const int att_ops[4] = {OP_LOOKUP, OP_STAT, OP_SHMSTAT, OP_ATTACH};
static const char *att_labels[4] = {"shmget lookup", "shmctl IPC_STAT", "shmctl SHM_STAT", "shmat+touch+shmdt"};
static const double att_targets[4] = {0.5, 0.5, 0.5, 1.2};
static double att_cost[4][4][2], att_samp[4][4][2][64];
static long att_err[4][4][2];

static void bench_attachers(void)
{
    for (int ki = 0; ki < 4; ki++) {
        for (int m = 0; m < 2; m++) {
            const char *r = ask(WK(0, m), "attachers %d", Ks[ki]);
            long e = 1, nattch = -1;
            if (r)
                sscanf(r, "%ld %ld", &e, &nattch);
            if (e || nattch != Ks[ki])
                add_err("%s: %d attachers: %ld errors, nattch %ld", WK(0, m)->name, Ks[ki], e, nattch);
        }
        for (int oi = 0; oi < 4; oi++)
            measure_pair(WK(0, 0), WK(0, 1), att_ops[oi], att_cost[ki][oi], att_samp[ki][oi], att_err[ki][oi]);
        fprintf(stderr, "  %3d attached: lookup %.0f/%.0f  IPC_STAT %.0f/%.0f  SHM_STAT %.0f/%.0f  shmat %.0f/%.0f ns\n", Ks[ki],
                att_cost[ki][0][0], att_cost[ki][0][1], att_cost[ki][1][0], att_cost[ki][1][1], att_cost[ki][2][0],
                att_cost[ki][2][1], att_cost[ki][3][0], att_cost[ki][3][1]);
    }
    for (int m = 0; m < 2; m++)
        ask(WK(0, m), "attachers 0");
}

/* shmat+touch+shmdt going round a working set of W segments (namespace N=4096). */
static const int Ws[4] = {1, 64, 1024, 4096};
static double rot_cost[4][2], rot_samp[4][2][64];
static long rot_err[4][2];

static void bench_rotate(void)
{
    for (int wi = 0; wi < 4; wi++) {
        for (int m = 0; m < 2; m++)
            ask(WK(NN - 1, m), "rotate %d", Ws[wi]);
        measure_pair(WK(NN - 1, 0), WK(NN - 1, 1), OP_ROTATE, rot_cost[wi], rot_samp[wi], rot_err[wi]);
        fprintf(stderr, "  working set %4d: native %.0f  shim %.0f ns\n", Ws[wi], rot_cost[wi][0], rot_cost[wi][1]);
    }
}

struct mem {
    long rss_kb, rss_att_kb;
    long long reg_size, reg_alloc;
};
static struct mem memv[2][2]; /* [N=1|N=4096][mode] */

static void measure_mem(int which, int ni)
{
    for (int m = 0; m < 2; m++) {
        struct worker *w = WK(ni, m);
        const char *r = ask(w, "mem");
        if (r)
            sscanf(r, "%ld %lld %lld", &memv[which][m].rss_kb, &memv[which][m].reg_size, &memv[which][m].reg_alloc);
        r = ask(w, "attachall");
        long e = 0;
        if (r) {
            sscanf(r, "%ld %ld", &memv[which][m].rss_att_kb, &e);
            if (e)
                add_err("%s: attach-all: %ld failures", w->name, e);
        }
    }
}

static double bw_mbs[2][2];     /* [fresh|rewrite][mode] */
static double bw_samp[2][2][64]; /* MB/s per rep */
static int bw_reps;

static void bench_bw(int reps)
{
    const char *kinds[2] = {"fresh", "rewrite"};
    bw_reps = reps;
    for (int k = 0; k < 2; k++) {
        for (int m = 0; m < 2; m++) /* warm-up */
            ask(WK(0, m), "bw %s 1", kinds[k]);
        for (int i = 0; i < reps; i++)
            for (int j = 0; j < 2; j++) {
                int m = (i + j) % 2;
                const char *r = ask(WK(0, m), "bw %s %d", kinds[k], i + 2);
                double ns = r ? atof(r) : 0;
                bw_samp[k][m][i] = ns > 0 ? (double)BW_SIZE / 1e6 / (ns / 1e9) : 0;
            }
        for (int m = 0; m < 2; m++)
            bw_mbs[k][m] = median(bw_samp[k][m], reps);
        fprintf(stderr, "  64 MiB %-8s native %10.0f  shim %10.0f  MB/s\n", kinds[k], bw_mbs[k][0], bw_mbs[k][1]);
    }
    for (int m = 0; m < 2; m++)
        ask(WK(0, m), "bwdone");
}

static const int Ps[4] = {1, 2, 4, 8};
static double conc_tp[4][2];
static int conc_bad[4];

static void bench_conc(long C, int reps)
{
    for (int pi = 0; pi < 4; pi++) {
        int P = Ps[pi];
        double s[2][16];
        for (int i = 0; i < reps; i++)
            for (int j = 0; j < 2; j++) {
                int m = (i + j) % 2;
                const char *r = ask(WK(0, m), "conc %d %ld", P, C);
                unsigned long long ns = 0, counter = 0;
                long e = 0;
                if (!r || sscanf(r, "%llu %ld %llu", &ns, &e, &counter) != 3) {
                    conc_bad[pi]++;
                    s[m][i] = 0;
                    continue;
                }
                if (e || counter != (unsigned long long)P * C) {
                    conc_bad[pi]++;
                    add_err("%s: concurrency P=%d: %ld errors, counter %llu, expected %llu", mode_names[m], P, e,
                            counter, (unsigned long long)P * C);
                }
                s[m][i] = ns ? (double)P * C / (ns / 1e9) : 0;
            }
        for (int m = 0; m < 2; m++)
            conc_tp[pi][m] = median(s[m], reps);
        fprintf(stderr, "  P=%d  native %10.0f  shim %10.0f  cycles/s  (counter checks: %s)\n", P, conc_tp[pi][0],
                conc_tp[pi][1], conc_bad[pi] ? "FAIL" : "ok");
    }
}

static const char *status_str(const struct row *r)
{
    switch (r->ok) {
    case 1: return "ok";
    case 0: return "MISS";
    case -2: return "FAIL";
    default: return "";
    }
}

static void target_str(const struct row *r, char *buf, size_t n)
{
    const char *who = r->judge_shim ? "shim " : "";
    if (r->tk == T_LE)
        snprintf(buf, n, "%s<= %.2f", who, r->target);
    else if (r->tk == T_GE)
        snprintf(buf, n, "%s>= %.2f", who, r->target);
    else if (r->tk == T_CHECK)
        snprintf(buf, n, "no lost upd.");
    else
        snprintf(buf, n, "-");
}

static void fmt_val(double v, const char *unit, char *buf, size_t n)
{
    if (strcmp(unit, "x") == 0)
        snprintf(buf, n, "%.2f", v);
    else if (v >= 1000)
        snprintf(buf, n, "%.0f", v);
    else
        snprintf(buf, n, "%.1f", v);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void build_rows(long C)
{
    char id[48], label[64];
    for (int op = 0; op < OP_N; op++) {
        struct row *r = add_row(op_names[op], op_labels[op], "ns/call", cost[0][op][0], cost[0][op][1], T_LE,
                                op_targets[op], 0);
        if (op_errors[0][op][0] || op_errors[0][op][1])
            r->ok = -2;
        r->samples[0] = cost_samp[0][op][0];
        r->samples[1] = cost_samp[0][op][1];
        r->nsamp = batches;
    }
    for (int k = 0; k < 2; k++) {
        snprintf(id, sizeof id, "bw64m_%s", k ? "rewrite" : "fresh");
        snprintf(label, sizeof label, "64MiB shmat+write+shmdt %s", k ? "(rewrite)" : "(new seg)");
        struct row *r = add_row(id, label, "MB/s", bw_mbs[k][0], bw_mbs[k][1], T_GE, 0.95, 0);
        r->samples[0] = bw_samp[k][0];
        r->samples[1] = bw_samp[k][1];
        r->nsamp = bw_reps;
    }
    for (int pi = 0; pi < 4; pi++) {
        snprintf(id, sizeof id, "conc_p%d", Ps[pi]);
        snprintf(label, sizeof label, "concurrency P=%d (%ld cycles each)", Ps[pi], C);
        struct row *r = add_row(id, label, "cycles/s", conc_tp[pi][0], conc_tp[pi][1], T_CHECK, 0, 0);
        r->ok = conc_bad[pi] ? -2 : 1;
    }
    {
        struct row *r = add_row("conc_p8_ratio", "concurrency P=8 throughput (ratio)", "cycles/s", conc_tp[3][0], conc_tp[3][1], T_GE, 0.8, 0);
        if (conc_bad[3])
            r->ok = -2;
    }
    for (int ki = 0; ki < 4; ki++)
        for (int oi = 0; oi < 4; oi++) {
            snprintf(id, sizeof id, "%s_att%d", op_names[att_ops[oi]], Ks[ki]);
            snprintf(label, sizeof label, "%s, %d others attached", att_labels[oi], Ks[ki]);
            struct row *r = add_row(id, label, "ns/call", att_cost[ki][oi][0], att_cost[ki][oi][1], T_LE, att_targets[oi], 0);
            if (att_err[ki][oi][0] || att_err[ki][oi][1])
                r->ok = -2;
            r->samples[0] = att_samp[ki][oi][0];
            r->samples[1] = att_samp[ki][oi][1];
            r->nsamp = batches;
        }
    for (int wi = 0; wi < 4; wi++) {
        snprintf(id, sizeof id, "rotate_w%d", Ws[wi]);
        snprintf(label, sizeof label, "shmat+touch+shmdt round %d segments", Ws[wi]);
        struct row *r = add_row(id, label, "ns/call", rot_cost[wi][0], rot_cost[wi][1], T_LE, 1.2, 0);
        if (rot_err[wi][0] || rot_err[wi][1])
            r->ok = -2;
        r->samples[0] = rot_samp[wi][0];
        r->samples[1] = rot_samp[wi][1];
        r->nsamp = batches;
    }
    for (int op = 0; op < OP_N; op++) {
        for (int ni = 1; ni < NN; ni++) {
            snprintf(id, sizeof id, "%s_n%d", op_names[op], Ns[ni]);
            snprintf(label, sizeof label, "%s N=%d", op_labels[op], Ns[ni]);
            struct row *r = add_row(id, label, "ns/call", cost[ni][op][0], cost[ni][op][1], T_NONE, 0, 0);
            if (op_errors[ni][op][0] || op_errors[ni][op][1])
                r->ok = -2;
            r->samples[0] = cost_samp[ni][op][0];
            r->samples[1] = cost_samp[ni][op][1];
            r->nsamp = batches;
        }
        snprintf(id, sizeof id, "%s_scale", op_names[op]);
        snprintf(label, sizeof label, "%s cost(4096)/cost(1)", op_labels[op]);
        double a = cost[0][op][0] > 0 ? cost[3][op][0] / cost[0][op][0] : 0;
        double b = cost[0][op][1] > 0 ? cost[3][op][1] / cost[0][op][1] : 0;
        add_row(id, label, "x", a, b, T_LE, 1.2, 1);
    }
}

static int coord(int argc, char **argv)
{
    const char *lib = NULL, *dir = NULL, *json = NULL;
    int quick = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            batches = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else
            die("usage: shmbench coord --lib LIB --dir DIR [--json FILE] [--batches N] [--quick]");
    }
    if (!lib || !dir)
        die("coord needs --lib and --dir");
    if (batches < 3)
        batches = 3;
    if (batches > 64)
        batches = 64;
    if (quick)
        batch_target_ns = 3e6;
    signal(SIGPIPE, SIG_IGN);

    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    self[n] = 0;
    char env_pre[PATH_MAX + 32], env_mni[64];
    snprintf(env_pre, sizeof env_pre, "LD_PRELOAD=%s", lib);
    snprintf(env_mni, sizeof env_mni, "SHMSHIM_SHMMNI=%d", SHMMNI_BENCH);

    uint64_t T0 = now_ns();
    for (int ni = 0; ni < NN; ni++) {
        char env_dir[PATH_MAX + 64];
        snprintf(env_dir, sizeof env_dir, "SHMSHIM_DIR=%s/n%d", dir, Ns[ni]);
        char *nat_argv[] = {"unshare", "--ipc", self, "worker", "native", NULL};
        char *shim_argv[] = {"unshare", "--ipc", "env", env_dir, env_mni, "SHMSHIM_MODE=emulate", env_pre,
                             self, "worker", "shim", NULL};
        for (int m = 0; m < 2; m++) {
            snprintf(WK(ni, m)->name, sizeof WK(ni, m)->name, "%s N=%d", mode_names[m], Ns[ni]);
            start_worker(WK(ni, m), m ? shim_argv : nat_argv);
        }
    }
    for (int w = 0; w < NW; w++) {
        if (!fgets(W[w].reply, sizeof W[w].reply, W[w].out))
            die("%s worker did not start", W[w].name);
        if (strncmp(W[w].reply, "ok", 2) != 0)
            die("%s worker: %s", W[w].name, W[w].reply);
    }
    fprintf(stderr, "== setup: N segments in each namespace\n");
    for (int w = 0; w < NW; w++) {
        uint64_t t0 = now_ns();
        const char *r = ask(&W[w], "setup %d", Ns[w / 2]);
        int used = -1;
        if (r && sscanf(r, "%*d %d", &used) == 1 && used != Ns[w / 2])
            add_err("%s: setup: namespace has %d segments", W[w].name, used);
        fprintf(stderr, "  %-12s %6.0f ms\n", W[w].name, (now_ns() - t0) / 1e6);
    }
    measure_mem(0, 0);
    measure_mem(1, NN - 1);

    fprintf(stderr, "== per-call costs, N = 1, 64, 1024, 4096\n");
    for (int op = 0; op < OP_N; op++)
        bench_op(op);
    fprintf(stderr, "== with 0, 10, 100, 400 other processes attached\n");
    bench_attachers();
    fprintf(stderr, "== working sets of 1, 64, 1024, 4096 segments\n");
    bench_rotate();
    fprintf(stderr, "== 64 MiB bandwidth\n");
    bench_bw(quick ? 3 : 7);
    long C = quick ? 300 : 2000;
    fprintf(stderr, "== concurrency\n");
    bench_conc(C, quick ? 3 : 5);

    for (int w = 0; w < NW; w++) {
        const char *r = ask(&W[w], "cleanup");
        long e = 0;
        int used = -1;
        if (r && sscanf(r, "%ld %d", &e, &used) == 2 && (e || used != 0))
            add_err("%s: cleanup: %ld errors, %d segments left", W[w].name, e, used);
        ask(&W[w], "quit");
        fclose(W[w].in);
        fclose(W[w].out);
    }
    for (int w = 0; w < NW; w++) {
        int st;
        waitpid(W[w].pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            add_err("%s worker exited with status %d", W[w].name, st);
    }
    double runtime = (now_ns() - T0) / 1e9;
    build_rows(C);

    /* ---- table ---- */
    printf("\n%-48s %12s %12s %8s %14s %6s\n", "benchmark", "native", "shim", "ratio", "target", "");
    for (int i = 0; i < nrows; i++) {
        struct row *r = &rows[i];
        char a[32], b[32], t[32], lab[96];
        fmt_val(r->native, r->unit, a, sizeof a);
        fmt_val(r->shim, r->unit, b, sizeof b);
        target_str(r, t, sizeof t);
        snprintf(lab, sizeof lab, "%s [%s]", r->label, r->unit);
        printf("%-48s %12s %12s %8.2f %14s %6s\n", lab, a, b, r->ratio, t, status_str(r));
    }
    printf("(ns/call: median of %d batches; ratio = shim/native; bandwidth and throughput: higher is better)\n",
           batches);
    printf("\n%-48s %12s %12s\n", "memory", "native", "shim");
    printf("%-48s %12s %12lld\n", "registry st_size, N=1 [bytes]", "-", memv[0][1].reg_size);
    printf("%-48s %12s %12lld\n", "registry st_size, N=4096 [bytes]", "-", memv[1][1].reg_size);
    printf("%-48s %12s %12lld\n", "registry st_blocks*512, N=1 [bytes]", "-", memv[0][1].reg_alloc);
    printf("%-48s %12s %12lld\n", "registry st_blocks*512, N=4096 [bytes]", "-", memv[1][1].reg_alloc);
    printf("%-48s %12s %12.0f\n", "  -> registry bytes per segment", "-",
           (double)(memv[1][1].reg_alloc - memv[0][1].reg_alloc) / 4095);
    printf("%-48s %12ld %12ld\n", "VmRSS of creator holding N=1 [kB]", memv[0][0].rss_kb, memv[0][1].rss_kb);
    printf("%-48s %12ld %12ld\n", "VmRSS of creator holding N=4096 [kB]", memv[1][0].rss_kb, memv[1][1].rss_kb);
    printf("%-48s %12.0f %12.0f\n", "  -> bytes per segment", (memv[1][0].rss_kb - memv[0][0].rss_kb) * 1024.0 / 4095,
           (memv[1][1].rss_kb - memv[0][1].rss_kb) * 1024.0 / 4095);
    printf("%-48s %12ld %12ld\n", "VmRSS with all N=1 attached [kB]", memv[0][0].rss_att_kb, memv[0][1].rss_att_kb);
    printf("%-48s %12ld %12ld\n", "VmRSS with all N=4096 attached [kB]", memv[1][0].rss_att_kb,
           memv[1][1].rss_att_kb);
    printf("%-48s %12.0f %12.0f\n", "  -> bytes per attached segment",
           (memv[1][0].rss_att_kb - memv[0][0].rss_att_kb) * 1024.0 / 4095,
           (memv[1][1].rss_att_kb - memv[0][1].rss_att_kb) * 1024.0 / 4095);
    int misses = 0;
    for (int i = 0; i < nrows; i++)
        misses += rows[i].ok == 0;
    printf("\nbenchmark time: %.1f s, targets missed: %d, errors: %d\n", runtime, misses, errs.n);
    for (int i = 0; i < errs.n && i < 64; i++)
        printf("  error: %s\n", errs.msg[i]);

    /* ---- json ---- */
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f)
            die("%s: %s", json, strerror(errno));
        fprintf(f, "{\n  \"tool\": \"shmbench\",\n  \"batches\": %d,\n  \"runtime_s\": %.2f,\n", batches, runtime);
        fprintf(f, "  \"targets_missed\": %d,\n  \"rows\": [\n", misses);
        for (int i = 0; i < nrows; i++) {
            struct row *r = &rows[i];
            char t[32];
            target_str(r, t, sizeof t);
            fprintf(f, "    {\"id\": ");
            json_str(f, r->id);
            fprintf(f, ", \"label\": ");
            json_str(f, r->label);
            fprintf(f, ", \"unit\": ");
            json_str(f, r->unit);
            fprintf(f, ", \"native\": %.6g, \"shim\": %.6g, \"ratio\": %.4g, \"target\": ", r->native, r->shim,
                    r->ratio);
            json_str(f, t);
            fprintf(f, ", \"status\": ");
            json_str(f, status_str(r));
            for (int m = 0; m < 2 && r->nsamp; m++) {
                fprintf(f, ", \"%s_samples\": [", mode_names[m]);
                for (int k = 0; k < r->nsamp; k++)
                    fprintf(f, "%s%.1f", k ? ", " : "", r->samples[m][k]);
                fprintf(f, "]");
            }
            fprintf(f, "}%s\n", i + 1 < nrows ? "," : "");
        }
        fprintf(f, "  ],\n  \"memory\": {\n");
        fprintf(f, "    \"registry_size_n1\": %lld, \"registry_size_n4096\": %lld,\n", memv[0][1].reg_size,
                memv[1][1].reg_size);
        fprintf(f, "    \"registry_alloc_n1\": %lld, \"registry_alloc_n4096\": %lld,\n", memv[0][1].reg_alloc,
                memv[1][1].reg_alloc);
        fprintf(f, "    \"native_vmrss_kb_n1\": %ld, \"native_vmrss_kb_n4096\": %ld,\n", memv[0][0].rss_kb,
                memv[1][0].rss_kb);
        fprintf(f, "    \"shim_vmrss_kb_n1\": %ld, \"shim_vmrss_kb_n4096\": %ld,\n", memv[0][1].rss_kb,
                memv[1][1].rss_kb);
        fprintf(f, "    \"native_vmrss_attached_kb_n1\": %ld, \"native_vmrss_attached_kb_n4096\": %ld,\n",
                memv[0][0].rss_att_kb, memv[1][0].rss_att_kb);
        fprintf(f, "    \"shim_vmrss_attached_kb_n1\": %ld, \"shim_vmrss_attached_kb_n4096\": %ld\n",
                memv[0][1].rss_att_kb, memv[1][1].rss_att_kb);
        fprintf(f, "  },\n  \"errors\": [");
        for (int i = 0; i < errs.n && i < 64; i++) {
            fprintf(f, "%s", i ? ", " : "");
            json_str(f, errs.msg[i]);
        }
        fprintf(f, "]\n}\n");
        fclose(f);
    }
    return errs.n ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "worker") == 0)
        return worker(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "ops") == 0) {
        w_mode = "ops";
        return ops(argv[2], atol(argv[3]));
    }
    if (argc >= 2 && strcmp(argv[1], "coord") == 0)
        return coord(argc, argv);
    fprintf(stderr,
            "usage: shmbench coord --lib LIB --dir DIR [--json FILE] [--batches N] [--quick]\n"
            "       shmbench worker native|shim\n"
            "       shmbench ops lookup|stat|attach|create|bw|cycle COUNT\n");
    return 2;
}
