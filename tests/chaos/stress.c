/* stress — many processes × threads on a small pool of keys.
 *
 *   stress [SECONDS [PROCS [THREADS]]]      (defaults: 10, 8, 4)
 *
 * The parent creates segment PS and attaches it twice, then forks PROCS
 * workers (each inherits both attaches, S118) with THREADS threads each.  Until
 * the deadline every thread picks at random: shmget (IPC_CREAT, lookup,
 * IPC_CREAT|IPC_EXCL), shmat (read-write or SHM_RDONLY), shmdt, IPC_STAT,
 * IPC_RMID, a fork whose child writes through its inherited attach of PS and
 * exits, or a write of its progress counter into PS through the inherited
 * attach.  Every result is checked against the list of errors the call may
 * legitimately return in a race (EINVAL/EIDRM for a segment removed meanwhile,
 * ENOENT for a lookup, EEXIST for IPC_EXCL); anything else is "unexpected".
 * Each attach is checked: a value written through it reads back, and through
 * the thread's other attaches of the same segment.  IPC_STAT must show the
 * key's size, mode 0600, the key (or 0 once SHM_DEST, S94) and nattch at least
 * the number of attaches the calling thread holds.  Half of the threads detach
 * everything at the end, the others leave it to exit (S120).
 *
 * When every worker has exited, the parent checks:
 *   - every worker exited 0 and no call returned an unexpected error;
 *   - PS holds every thread's final counter and every fork child's token
 *     (writes through inherited attaches are visible, S119);
 *   - PS has nattch 2 (the parent's own attaches), every other segment nattch
 *     0, none is left SHM_DEST, and SHM_INFO agrees with a SHM_STAT_ANY walk;
 *   - $CHAOS_SHMSHIM check passes (when set: runs under the shim);
 * then removes everything (SHM_INFO must show no segment) and, under the shim
 * ($SHMSHIM_DIR set), waits for the server to exit and checks that no process
 * holds a memfd named SYSV<key> for one of this run's keys (no memfd leak).
 *
 * Output: a few summary lines, "FAIL ..." lines and exit status 1 on failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SHM_STAT_ANY
#define SHM_STAT_ANY 15
#endif

#define PAGE 4096UL
#define FAILED ((void *)-1)
#define NKEYS 8
#define MAXPROCS 16
#define MAXTHREADS 8
#define MAXATT 16
#define PS_PAGES 4
/* PS layout: one 8-byte counter per (worker, thread), then one 8-byte fork
 * token per (worker, thread). */
#define CELL(w, t) ((w) * MAXTHREADS + (t))
#define TOKEN_OFF (MAXPROCS * MAXTHREADS * 8)

struct shared {
    unsigned long unexpected;
    unsigned long ops[MAXPROCS][MAXTHREADS];
    unsigned long forks[MAXPROCS][MAXTHREADS];
    unsigned long tokens[MAXPROCS][MAXTHREADS];
    unsigned long token_unknown[MAXPROCS][MAXTHREADS]; /* a fork child failed: PS token unknown */
    unsigned long attaches, detaches, stats, rmids, creates;
};

static struct shared *sh;
static int key_base;
static int idPS;
static char *pa, *pb;
static double deadline;
static int nprocs = 8, nthreads = 4;
static int failures;

__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    failures++;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static size_t key_size(int k) { return PAGE * (k % 3 + 1) + (k & 1) * 100; }

static __thread int my_w = -1, my_t = -1;

__attribute__((format(printf, 1, 2))) static void unexpected(const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(b, sizeof b, "UNEXPECTED pid %d worker %d thread %d: ", (int)getpid(), my_w, my_t);
    n += vsnprintf(b + n, sizeof b - n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof b - 2) n = sizeof b - 2;
    b[n++] = '\n';
    if (write(2, b, n) < 0) {
    }
    __atomic_fetch_add(&sh->unexpected, 1, __ATOMIC_RELAXED);
}

/* -1 with errno ok1/ok2 is a legitimate race; any other -1 is unexpected. */
static int allowed(const char *what, long r, int e, int ok1, int ok2)
{
    if (r != -1) return 1;
    if (e == ok1 || e == ok2) return 0;
    unexpected("%s = -1 %s", what, strerror(e));
    return 0;
}

struct att {
    char *p;
    int id;
    int k;
    int rw;
};

struct tstate {
    int w, t;
    uint64_t rng;
    int ids[NKEYS];
    struct att a[MAXATT];
    int na;
};

static unsigned tr(struct tstate *s, unsigned n)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return (unsigned)(s->rng % n);
}

static int held(struct tstate *s, int id)
{
    int n = 0;
    for (int i = 0; i < s->na; i++)
        if (s->a[i].id == id) n++;
    return n;
}

static void check_stat(struct tstate *s, int k, int id)
{
    struct shmid_ds d;
    int r = shmctl(id, IPC_STAT, &d);
    __atomic_fetch_add(&sh->stats, 1, __ATOMIC_RELAXED);
    if (!allowed("IPC_STAT", r, errno, EINVAL, EIDRM)) return;
    if (d.shm_segsz != key_size(k)) unexpected("IPC_STAT(%d): segsz %zu, expected %zu", id, d.shm_segsz, key_size(k));
    if ((d.shm_perm.mode & 0777) != 0600) unexpected("IPC_STAT(%d): mode %o", id, d.shm_perm.mode);
    if (d.shm_perm.mode & SHM_DEST) {
        if (d.shm_perm.__key != 0) unexpected("IPC_STAT(%d): SHM_DEST but key %#x", id, d.shm_perm.__key);
    } else if (d.shm_perm.__key != key_base + k) {
        unexpected("IPC_STAT(%d): key %#x, expected %#x", id, d.shm_perm.__key, key_base + k);
    }
    unsigned long h = (unsigned long)held(s, id);
    if (d.shm_nattch < h)
        unexpected("IPC_STAT(%d): nattch %lu but this thread alone holds %lu attaches", id,
                   (unsigned long)d.shm_nattch, h);
}

static void do_fork(struct tstate *s)
{
    unsigned long token = ((unsigned long)s->w << 48) | ((unsigned long)s->t << 40) | (s->rng & 0xffffffffffUL) | 1;
    int pool_k = (int)tr(s, NKEYS);
    pid_t p = fork();
    if (p < 0) {
        unexpected("fork = -1 %s", strerror(errno));
        return;
    }
    if (p > 0) sh->token_unknown[s->w][s->t] = 1; /* until this child is known to be done */
    if (p == 0) {
        /* single-threaded copy: write through the inherited attach of PS */
        unsigned long *tok = (unsigned long *)(pa + TOKEN_OFF) + CELL(s->w, s->t);
        *tok = token;
        struct shmid_ds d;
        if (shmctl(idPS, IPC_STAT, &d) != 0)
            unexpected("fork child: IPC_STAT(PS) = -1 %s", strerror(errno));
        else if (d.shm_nattch < 2)
            unexpected("fork child: nattch(PS) = %lu while this process inherits 2+ attaches",
                       (unsigned long)d.shm_nattch);
        int id = shmget(key_base + pool_k, key_size(pool_k), IPC_CREAT | 0600);
        if (allowed("fork child: shmget(IPC_CREAT)", id, errno, 0, 0)) {
            char *q = shmat(id, NULL, 0);
            if (allowed("fork child: shmat", q == FAILED ? -1 : 0, errno, EINVAL, EIDRM)) {
                q[PAGE - 1] = 1;
                if (getpid() & 1) shmdt(q); /* else exit detaches */
            }
        }
        _exit(0);
    }
    /* wait with a timeout: a child that hangs (e.g. a lock inherited in a bad
     * state from this multi-threaded process) is a failure, not a hang */
    int st;
    double until = now_s() + 10;
    for (;;) {
        pid_t w = waitpid(p, &st, WNOHANG);
        if (w == p) break;
        if (w < 0 && errno != EINTR) {
            unexpected("waitpid(fork child) = -1 %s", strerror(errno));
            return;
        }
        if (now_s() > until) {
            unexpected("fork child %d hung for 10 s (killed)", (int)p);
            kill(p, SIGKILL);
            waitpid(p, &st, 0);
            return;
        }
        usleep(1000);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        unexpected("fork child ended with status %#x", st);
        return;
    }
    unsigned long *tok = (unsigned long *)(pa + TOKEN_OFF) + CELL(s->w, s->t);
    if (*tok != token) unexpected("fork child's write through its inherited attach is not visible");
    sh->tokens[s->w][s->t] = token;
    sh->token_unknown[s->w][s->t] = 0;
    sh->forks[s->w][s->t]++;
}

static void *thread_main(void *arg)
{
    struct tstate *s = arg;
    my_w = s->w;
    my_t = s->t;
    unsigned long *counter = (unsigned long *)pa + CELL(s->w, s->t);
    unsigned long ops = 0;
    for (int k = 0; k < NKEYS; k++) s->ids[k] = -1;
    while (now_s() < deadline) {
        ops++;
        unsigned op = tr(s, 100);
        int k = (int)tr(s, NKEYS);
        int key = key_base + k;
        if (op < 18) {
            int id = shmget(key, key_size(k), IPC_CREAT | 0600);
            if (allowed("shmget(IPC_CREAT)", id, errno, 0, 0)) s->ids[k] = id;
        } else if (op < 22) {
            int id = shmget(key, 0, 0);
            if (allowed("shmget(lookup)", id, errno, ENOENT, 0)) s->ids[k] = id;
        } else if (op < 26) {
            int id = shmget(key, key_size(k), IPC_CREAT | IPC_EXCL | 0600);
            if (allowed("shmget(IPC_EXCL)", id, errno, EEXIST, 0)) {
                s->ids[k] = id;
                __atomic_fetch_add(&sh->creates, 1, __ATOMIC_RELAXED);
            }
        } else if (op < 46) {
            if (s->ids[k] < 0 || s->na >= MAXATT) continue;
            int rw = tr(s, 4) != 0;
            char *p = shmat(s->ids[k], NULL, rw ? 0 : SHM_RDONLY);
            if (!allowed("shmat", p == FAILED ? -1 : 0, errno, EINVAL, EIDRM)) continue;
            __atomic_fetch_add(&sh->attaches, 1, __ATOMIC_RELAXED);
            s->a[s->na++] = (struct att){p, s->ids[k], k, rw};
            /* each thread owns one 8-byte cell of every pool segment */
            volatile unsigned long *cell = (unsigned long *)p + 8 + CELL(s->w, s->t);
            if (rw) {
                unsigned long v = s->rng;
                *cell = v;
                if (*cell != v) unexpected("write through a fresh attach does not read back");
                for (int i = 0; i < s->na - 1; i++) {
                    if (s->a[i].id != s->ids[k]) continue;
                    volatile unsigned long *c2 = (unsigned long *)s->a[i].p + 8 + CELL(s->w, s->t);
                    if (*c2 != v) unexpected("two attaches of segment %d do not share memory", s->ids[k]);
                }
            } else {
                volatile unsigned long v = *cell;
                (void)v;
            }
        } else if (op < 60) {
            if (s->na == 0) continue;
            int i = (int)tr(s, s->na);
            int r = shmdt(s->a[i].p);
            __atomic_fetch_add(&sh->detaches, 1, __ATOMIC_RELAXED);
            allowed("shmdt(own attach)", r, errno, 0, 0);
            s->a[i] = s->a[--s->na];
        } else if (op < 76) {
            if (s->ids[k] >= 0) check_stat(s, k, s->ids[k]);
        } else if (op < 84) {
            if (s->ids[k] < 0) continue;
            int r = shmctl(s->ids[k], IPC_RMID, NULL);
            __atomic_fetch_add(&sh->rmids, 1, __ATOMIC_RELAXED);
            allowed("IPC_RMID", r, errno, EINVAL, EIDRM);
        } else if (op < 87) {
            do_fork(s);
        } else {
            *counter = ops;
        }
    }
    *counter = ops;
    sh->ops[s->w][s->t] = ops;
    if (s->t % 2 == 0) {
        for (int i = 0; i < s->na; i++) {
            int r = shmdt(s->a[i].p);
            allowed("shmdt(at the end)", r, errno, 0, 0);
        }
        s->na = 0;
    }
    return NULL;
}

static void worker(int w)
{
    pthread_t th[MAXTHREADS];
    static struct tstate st[MAXTHREADS];
    for (int t = 0; t < nthreads; t++) {
        st[t] = (struct tstate){.w = w, .t = t, .rng = 0x9e3779b97f4a7c15ULL * (w * 131 + t + 1) ^ (uint64_t)getpid()};
        if (pthread_create(&th[t], NULL, thread_main, &st[t])) {
            unexpected("pthread_create failed");
            _exit(1);
        }
    }
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    exit(0); /* attaches of the odd threads are detached by exit */
}

/* ------------------------------------------------------------ parent checks */

static int run_check(const char *bin)
{
    int pfd[2];
    if (pipe(pfd)) return -1;
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        unsetenv("LD_PRELOAD");
        execl(bin, "shmshim", "check", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char out[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof out - 1 && (r = read(pfd[0], out + n, sizeof out - 1 - n)) > 0) n += r;
    out[n] = 0;
    close(pfd[0]);
    int st;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fail("shmshim check exited %d: %s", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out);
        return -1;
    }
    return 0;
}

/* Processes with an argument equal to dir (the server runs with --dir DIR). */
static int procs_naming(const char *dir, char *who, size_t whosz)
{
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    who[0] = 0;
    while ((e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0 || pid == getpid()) continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        int match = 0;
        for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
            if (!strcmp(buf + i, dir)) match = 1;
        if (!match) continue;
        for (size_t i = 0; i < len; i++)
            if (!buf[i]) buf[i] = ' ';
        n++;
        size_t l = strlen(who);
        buf[200] = 0;
        if (whosz - l > 220) snprintf(who + l, whosz - l, "[%d: %.200s] ", pid, buf);
    }
    closedir(d);
    return n;
}

/* Whether process `pid` belongs to namespace `dir`: SHMSHIM_DIR=dir in its
 * environment, or dir on its command line (the server). */
static int in_namespace(int pid, const char *dir)
{
    char path[64], buf[65536];
    const char *files[] = {"environ", "cmdline"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", pid, files[i]);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t l = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (l <= 0) continue;
        buf[l] = 0;
        for (ssize_t k = 0; k < l; k++)
            if (buf[k] == 0) buf[k] = '\n';
        if (strstr(buf, dir)) return 1;
    }
    return 0;
}

/* Memfd descriptors this run leaked: under the shim (dir set), any memfd named
 * SYSV... held by a process of this namespace once every segment is gone and the
 * server has exited (pooled memfds are named plain "SYSV"); natively, memfds
 * named SYSV<key> for one of our keys (there should be none at all). */
static int memfd_leaks(const char *dir)
{
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        if (dir && !in_namespace(pid, dir)) continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd", pid);
        DIR *fd = opendir(path);
        if (!fd) continue;
        struct dirent *f;
        while ((f = readdir(fd))) {
            if (f->d_name[0] == '.') continue;
            char lp[300], target[256];
            snprintf(lp, sizeof lp, "/proc/%d/fd/%s", pid, f->d_name);
            ssize_t l = readlink(lp, target, sizeof target - 1);
            if (l <= 0) continue;
            target[l] = 0;
            unsigned key;
            int ours = dir ? strncmp(target, "/memfd:SYSV", 11) == 0
                           : sscanf(target, "/memfd:SYSV%8x", &key) == 1 && (int)(key & ~0xffU) == key_base;
            if (ours) {
                printf("FAIL memfd leak: pid %d fd %s -> %s\n", pid, f->d_name, target);
                n++;
            }
        }
        closedir(fd);
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    if (argc > 2) nprocs = atoi(argv[2]);
    if (argc > 3) nthreads = atoi(argv[3]);
    if (nprocs < 1 || nprocs > MAXPROCS || nthreads < 1 || nthreads > MAXTHREADS) {
        fprintf(stderr, "usage: %s [SECONDS [PROCS<=%d [THREADS<=%d]]]\n", argv[0], MAXPROCS, MAXTHREADS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *bin = getenv("CHAOS_SHMSHIM");
    if (bin && !*bin) bin = NULL;
    const char *dir = getenv("SHMSHIM_DIR");
    if (dir && !*dir) dir = NULL;
    if (!dir) bin = NULL; /* `shmshim check` inspects the shim's namespace: shim runs only */

    /* keys unique to this run, so that leaked memfds (named SYSV<key>) are ours */
    key_base = 0x53000000 | ((getpid() & 0xffff) << 8);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 99;
    alarm((unsigned)seconds + 120); /* last resort: SIGALRM kills a hung parent */

    idPS = shmget(key_base + 0xff, PS_PAGES * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    if (idPS < 0) {
        printf("FAIL setup: shmget(PS) = -1 %s\n", strerror(errno));
        return 1;
    }
    pa = shmat(idPS, NULL, 0);
    pb = shmat(idPS, NULL, 0);
    if (pa == FAILED || pb == FAILED) {
        printf("FAIL setup: shmat(PS) = -1 %s\n", strerror(errno));
        return 1;
    }

    double t0 = now_s();
    deadline = t0 + seconds;
    pid_t pids[MAXPROCS];
    fflush(stdout);
    for (int w = 0; w < nprocs; w++) {
        pids[w] = fork();
        if (pids[w] < 0) {
            printf("FAIL fork = -1 %s\n", strerror(errno));
            return 1;
        }
        if (pids[w] == 0) worker(w);
    }
    int alive = nprocs;
    double give_up = deadline + 60;
    while (alive > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (int w = 0; w < nprocs; w++) {
                if (pids[w] != p) continue;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("worker %d ended with status %#x", w, st);
                pids[w] = 0;
                alive--;
            }
            continue;
        }
        if (now_s() > give_up) {
            for (int w = 0; w < nprocs; w++) {
                if (!pids[w]) continue;
                fail("worker %d (pid %d) still running 60 s after the deadline: deadlock? (killed)", w, (int)pids[w]);
                kill(pids[w], SIGKILL);
                waitpid(pids[w], &st, 0);
                pids[w] = 0;
            }
            break;
        }
        usleep(10000);
    }
    double t1 = now_s();

    unsigned long total = 0, forks = 0;
    for (int w = 0; w < nprocs; w++)
        for (int t = 0; t < nthreads; t++) {
            total += sh->ops[w][t];
            forks += sh->forks[w][t];
        }
    printf("stress: %d processes x %d threads, %.1f s, %lu operations (%lu creates, %lu attaches, %lu detaches, "
           "%lu IPC_STAT, %lu IPC_RMID, %lu forks)\n",
           nprocs, nthreads, t1 - t0, total, sh->creates, sh->attaches, sh->detaches, sh->stats, sh->rmids, forks);
    if (sh->unexpected) fail("%lu calls returned an unexpected result (see stderr)", sh->unexpected);
    if (total < (unsigned long)nprocs * nthreads) fail("only %lu operations ran", total);

    /* writes through inherited attaches (S119) */
    for (int w = 0; w < nprocs; w++)
        for (int t = 0; t < nthreads; t++) {
            unsigned long c = ((unsigned long *)pb)[CELL(w, t)];
            if (c != sh->ops[w][t])
                fail("PS counter of worker %d thread %d reads %lu, the thread wrote %lu", w, t, c, sh->ops[w][t]);
            unsigned long tok = ((unsigned long *)(pb + TOKEN_OFF))[CELL(w, t)];
            if (sh->forks[w][t] && !sh->token_unknown[w][t] && tok != sh->tokens[w][t])
                fail("PS fork token of worker %d thread %d reads %#lx, the last fork child wrote %#lx", w, t, tok,
                     sh->tokens[w][t]);
        }

    /* nattch after every worker exited */
    struct shminfo info;
    int max = shmctl(0, IPC_INFO, (struct shmid_ds *)&info);
    if (max < 0) fail("IPC_INFO = -1 %s", strerror(errno));
    int nseg = 0;
    unsigned long pages = 0;
    for (int i = 0; i <= max; i++) {
        struct shmid_ds d;
        int id = shmctl(i, SHM_STAT_ANY, &d);
        if (id < 0) continue;
        nseg++;
        pages += (d.shm_segsz + PAGE - 1) / PAGE;
        unsigned long want = id == idPS ? 2 : 0;
        if (d.shm_nattch != want)
            fail("segment %d (key %#x mode %04o): nattch %lu, expected %lu (the parent's own attaches)", id,
                 d.shm_perm.__key, d.shm_perm.mode, (unsigned long)d.shm_nattch, want);
        if (d.shm_perm.mode & SHM_DEST)
            fail("segment %d survives with SHM_DEST (nattch %lu)", id, (unsigned long)d.shm_nattch);
    }
    struct shm_info si;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r < 0 || si.used_ids != nseg || si.shm_tot != pages)
        fail("SHM_INFO = %d used_ids=%d shm_tot=%lu; the walk found %d segments, %lu pages", r, si.used_ids,
             si.shm_tot, nseg, pages);
    printf("stress: %d segments left after the workers exited\n", nseg);
    if (bin) run_check(bin);

    /* remove everything */
    for (int i = 0; i <= max; i++) {
        struct shmid_ds d;
        int id = shmctl(i, SHM_STAT_ANY, &d);
        if (id >= 0 && shmctl(id, IPC_RMID, NULL) != 0) fail("IPC_RMID(%d) = -1 %s", id, strerror(errno));
    }
    if (shmdt(pa) || shmdt(pb)) fail("shmdt(PS) = -1 %s", strerror(errno));
    r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r < 0 || si.used_ids != 0) fail("after removing everything: SHM_INFO = %d used_ids=%d", r, si.used_ids);
    if (bin) run_check(bin);

    if (dir) {
        /* the server exits once the namespace is empty (after ~0.3 s) */
        char who[2048];
        int n = 0;
        for (int i = 0; i < 50; i++) {
            n = procs_naming(dir, who, sizeof who);
            if (!n) break;
            usleep(100000);
        }
        if (n) fail("%d processes still name %s 5 s after the namespace emptied: %s", n, dir, who);
    }
    int leaks = memfd_leaks(dir);
    if (leaks) fail("%d memfd descriptors of this run's segments still open", leaks);
    printf("stress: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
