/* crash — crash safety: processes SIGKILLed in the middle of shm calls.
 *
 *   crash [ITERATIONS [SECONDS [SEED]]]      (defaults: 200, 60, 1)
 *
 * The parent creates a segment P and attaches it twice.  Then, ITERATIONS
 * times (or until SECONDS have passed), it forks a child that hammers the shm
 * calls (create by key, attach, write, detach, IPC_STAT, IPC_RMID while
 * attached, partial munmap, shmdt of the inherited attach of P, fork of
 * grandchildren that do the same) and SIGKILLs the child's whole process group
 * after a random delay of 0-2 ms, so that many deaths land inside shim calls,
 * some of them while the registry lock is held.  After each kill the parent,
 * with alarm() guarding against a deadlock, checks:
 *   - shmget(P's key) still finds P; IPC_STAT of P works and nattch == 2 (the
 *     parent's own attaches: every dead process's attaches are gone, S122);
 *   - every other segment has nattch 0 and none is left marked SHM_DEST
 *     (S123: the last dead attacher destroys it); SHM_INFO agrees with the
 *     SHM_STAT_ANY walk;
 *   - a new segment can be created, attached, written, detached and removed;
 *   - $CHAOS_SHMSHIM check (the shim's registry invariants) exits 0, when
 *     CHAOS_SHMSHIM names the shmshim binary (runs under the shim only).
 * At the end every segment is removed and SHM_INFO must report none.
 *
 * Output: a summary line; "FAIL ..." lines (and exit status 1) on any
 * violation, "HANG ..." (exit status 3) when a call blocks for 10 s.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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
#define KEY_P 0x43520000
#define KEY_POOL 0x43520010 /* + 0..NPOOL-1 */
#define NPOOL 4
#define KEY_NEW 0x43520100
#define HANG_SECONDS 10

static const char *volatile step = "start";
static int failures;

static void on_alarm(int sig)
{
    (void)sig;
    char b[256];
    int n = snprintf(b, sizeof b, "HANG: no progress for %d s in step \"%s\"\n", HANG_SECONDS, step);
    if (write(1, b, n) < 0) {
    }
    /* What every process is blocked in, for the report (fork and exec are
     * async-signal-safe; the shell runs without the shim). */
    pid_t d = fork();
    if (d == 0) {
        static char *const env[] = {"PATH=/usr/bin:/bin", NULL};
        execle("/bin/sh", "sh", "-c",
               "ps -eo pid,ppid,pgid,stat,wchan:28,args | grep -E 'shmshim|crash|STAT' | grep -v grep;"
               "for p in $(pgrep -f 'shmshim|chaos'); do echo \"--- $p $(cat /proc/$p/comm)\";"
               " for t in /proc/$p/task/*; do cat $t/stack 2>/dev/null | head -6; done; done",
               (char *)NULL, env);
        _exit(127);
    }
    if (d > 0) waitpid(d, NULL, 0);
    _exit(3);
}

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

static void spin_us(unsigned us)
{
    double end = now_s() + us / 1e6;
    while (now_s() < end) {
    }
}

/* ------------------------------------------------------------ the victims */

static uint64_t crng;
static volatile unsigned long *victim_ops; /* shared anonymous page: calls made by victims */
static unsigned cr(unsigned n)
{
    crng ^= crng << 13;
    crng ^= crng >> 7;
    crng ^= crng << 17;
    return (unsigned)(crng % n);
}

/* An error a victim may legitimately see while its siblings remove segments. */
static void victim_check(const char *what, long r, int e, int ok1, int ok2)
{
    if (r != -1 || e == ok1 || e == ok2) return;
    char b[160];
    int n = snprintf(b, sizeof b, "victim %d: %s = -1 errno %d (%s)\n", (int)getpid(), what, e, strerror(e));
    if (write(2, b, n) < 0) {
    }
    _exit(40);
}

__attribute__((noreturn)) static void hammer(int depth, char *inherited)
{
    void *mine[8];
    int nmine = 0;
    int forks = 0;
    for (;;) {
        unsigned op = cr(100);
        int k = (int)cr(NPOOL);
        __atomic_fetch_add(victim_ops, 1, __ATOMIC_RELAXED);
        if (op < 22) {
            int id = shmget(KEY_POOL + k, PAGE * (k + 1), IPC_CREAT | 0600);
            victim_check("shmget(IPC_CREAT)", id, errno, 0, 0);
            if (nmine < 8) {
                void *p = shmat(id, NULL, 0);
                victim_check("shmat", p == FAILED ? -1 : 0, errno, EINVAL, EIDRM);
                if (p != FAILED) {
                    memset(p, 0x5a, 64);
                    mine[nmine++] = p;
                }
            }
        } else if (op < 40 && nmine > 0) {
            int i = (int)cr(nmine);
            int r = shmdt(mine[i]);
            victim_check("shmdt(own attach)", r, errno, 0, 0);
            mine[i] = mine[--nmine];
        } else if (op < 46) {
            int id = shmget(KEY_P, 0, 0);
            victim_check("shmget(P)", id, errno, 0, 0);
            void *p = shmat(id, NULL, cr(2) ? SHM_RDONLY : 0);
            victim_check("shmat(P)", p == FAILED ? -1 : 0, errno, 0, 0);
            if (p != FAILED) {
                volatile char c = ((char *)p)[100];
                (void)c;
                shmdt(p);
            }
        } else if (op < 52) {
            struct shmid_ds d;
            int id = shmget(KEY_POOL + k, 0, 0);
            victim_check("shmget(pool)", id, errno, ENOENT, 0);
            if (id >= 0) {
                int r = shmctl(id, IPC_STAT, &d);
                victim_check("IPC_STAT", r, errno, EINVAL, EIDRM);
            }
        } else if (op < 72) {
            int id = shmget(KEY_POOL + k, 0, 0);
            victim_check("shmget(pool)", id, errno, ENOENT, 0);
            if (id >= 0) {
                void *p = nmine < 8 ? shmat(id, NULL, 0) : FAILED;
                int r = shmctl(id, IPC_RMID, NULL);
                victim_check("IPC_RMID", r, errno, EINVAL, EIDRM);
                if (p != FAILED) {
                    memset(p, 0x33, 16); /* S94: still usable after IPC_RMID */
                    mine[nmine++] = p;
                }
            }
        } else if (op < 78 && nmine > 0) {
            /* a second fragment (S72) */
            int i = (int)cr(nmine);
            munmap(mine[i], PAGE);
            /* S71: shmdt(original address) removes the rest (EINVAL if the
             * munmap took the whole one-page attach) */
            int r = shmdt(mine[i]);
            victim_check("shmdt(after partial munmap)", r, errno, EINVAL, 0);
            mine[i] = mine[--nmine];
        } else if (op < 80 && inherited) {
            int r = shmdt(inherited);
            victim_check("shmdt(inherited P)", r, errno, 0, 0);
            inherited = NULL;
        } else if (op < 85 && depth == 0 && forks < 3) {
            forks++;
            pid_t g = fork();
            if (g == 0) {
                /* the grandchild carries on with the inherited attaches */
                crng = crng * 6364136223846793005ULL + (uint64_t)getpid();
                depth = 1;
            }
        } else if (op < 87 && depth == 1) {
            _exit(0); /* a normal exit with attaches held (S120) */
        } else {
            int id = shmget(KEY_POOL + k, 0, 0);
            if (id >= 0) {
                struct shm_info si;
                shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
            }
        }
        if (depth == 0) {
            int st;
            while (waitpid(-1, &st, WNOHANG) > 0) {
            }
        }
    }
}

/* ------------------------------------------------------------ the checks */

static const char *shmshim_bin;

static int run_check(int iter)
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
        execl(shmshim_bin, "shmshim", "check", (char *)NULL);
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
        fail("iteration %d: shmshim check exited %d: %s", iter,
             WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out);
        return -1;
    }
    return 0;
}

static int idP;
static char *pa, *pb;

static void verify(int iter)
{
    alarm(HANG_SECONDS);

    step = "shmget(P)";
    int id = shmget(KEY_P, 0, 0);
    if (id != idP) fail("iteration %d: shmget(P) = %d (errno %d), expected %d", iter, id, errno, idP);

    step = "IPC_STAT(P)";
    struct shmid_ds d;
    if (shmctl(idP, IPC_STAT, &d) != 0)
        fail("iteration %d: IPC_STAT(P) errno %d", iter, errno);
    else if (d.shm_nattch != 2)
        fail("iteration %d: nattch(P) = %lu, expected 2 (the parent's own attaches)", iter,
             (unsigned long)d.shm_nattch);

    step = "memory of P";
    pa[0] = (char)iter;
    if (pb[0] != (char)iter) fail("iteration %d: the two attaches of P do not share memory", iter);

    step = "SHM_STAT_ANY walk";
    struct shminfo info;
    int max = shmctl(0, IPC_INFO, (struct shmid_ds *)&info);
    if (max < 0) fail("iteration %d: IPC_INFO errno %d", iter, errno);
    int nseg = 0;
    unsigned long pages = 0;
    for (int i = 0; i <= max; i++) {
        int sid = shmctl(i, SHM_STAT_ANY, &d);
        if (sid < 0) {
            if (errno != EINVAL) fail("iteration %d: SHM_STAT_ANY(%d) errno %d", iter, i, errno);
            continue;
        }
        nseg++;
        pages += (d.shm_segsz + PAGE - 1) / PAGE;
        if (sid == idP) continue;
        if (d.shm_nattch != 0)
            fail("iteration %d: segment %d (key %#x) nattch = %lu with no live attacher", iter, sid,
                 d.shm_perm.__key, (unsigned long)d.shm_nattch);
        if (d.shm_perm.mode & SHM_DEST)
            fail("iteration %d: segment %d survives with SHM_DEST and nattch %lu (mode %04o segsz %zu)", iter, sid,
                 (unsigned long)d.shm_nattch, d.shm_perm.mode, d.shm_segsz);
    }
    step = "SHM_INFO";
    struct shm_info si;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r < 0) fail("iteration %d: SHM_INFO errno %d", iter, errno);
    else if (si.used_ids != nseg || si.shm_tot != pages || r != max)
        fail("iteration %d: SHM_INFO used_ids=%d shm_tot=%lu ret=%d, walk found %d segments, %lu pages, max %d",
             iter, si.used_ids, si.shm_tot, r, nseg, pages, max);

    step = "create/attach/remove";
    int nid = shmget(KEY_NEW, 3 * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    if (nid < 0) {
        fail("iteration %d: shmget(new) errno %d", iter, errno);
    } else {
        char *p = shmat(nid, NULL, 0);
        if (p == FAILED) {
            fail("iteration %d: shmat(new) errno %d", iter, errno);
        } else {
            if (p[PAGE] != 0) fail("iteration %d: new segment not zeroed", iter);
            p[PAGE] = 7;
            if (shmdt(p)) fail("iteration %d: shmdt(new) errno %d", iter, errno);
        }
        if (shmctl(nid, IPC_RMID, NULL)) fail("iteration %d: IPC_RMID(new) errno %d", iter, errno);
    }

    if (shmshim_bin) {
        step = "shmshim check";
        run_check(iter);
    }
    alarm(0);
    step = "between checks";
}

/* Kill the victim's process group and reap everything that died. */
static int kill_and_reap(pid_t pid)
{
    int st, killed_by_us = 0;
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    if (waitpid(pid, &st, 0) == pid) {
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) killed_by_us = 1;
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 40) fail("a victim saw an unexpected error (see stderr)");
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("victim ended with status %#x", st);
    }
    /* grandchildren: same process group, reparented to us (subreaper) */
    for (int tries = 0; tries < 2000; tries++) {
        if (kill(-pid, SIGKILL) != 0 && errno == ESRCH) break;
        pid_t w;
        while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
            if (WIFEXITED(st) && WEXITSTATUS(st) == 40) fail("a victim saw an unexpected error (see stderr)");
        }
        usleep(1000);
    }
    while (waitpid(-1, &st, WNOHANG) > 0) {
        if (WIFEXITED(st) && WEXITSTATUS(st) == 40) fail("a victim saw an unexpected error (see stderr)");
    }
    return killed_by_us;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 200;
    double budget = argc > 2 ? atof(argv[2]) : 60;
    unsigned long seed = argc > 3 ? strtoul(argv[3], NULL, 0) : 1;
    shmshim_bin = getenv("CHAOS_SHMSHIM");
    if (shmshim_bin && !*shmshim_bin) shmshim_bin = NULL;
    /* `shmshim check` inspects the shim's namespace: shim runs only (natively it
     * would open, and leave behind, the default namespace). */
    const char *nsdir = getenv("SHMSHIM_DIR");
    if (!nsdir || !*nsdir) shmshim_bin = NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    srand48((long)seed);

    victim_ops = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (victim_ops == MAP_FAILED) return 99;
    alarm(HANG_SECONDS);
    step = "setup";
    idP = shmget(KEY_P, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    if (idP < 0) {
        printf("FAIL setup: shmget(P) errno %d\n", errno);
        return 1;
    }
    pa = shmat(idP, NULL, 0);
    pb = shmat(idP, NULL, 0);
    if (pa == FAILED || pb == FAILED) {
        printf("FAIL setup: shmat(P) errno %d\n", errno);
        return 1;
    }
    alarm(0);
    /* grandchildren of killed victims are reparented to us, so we can reap them */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    double t0 = now_s();
    int done = 0, killed = 0, checks = 0;
    for (int i = 0; i < iters && now_s() - t0 < budget && failures < 5; i++) {
        fflush(stdout);
        unsigned delay = (unsigned)(drand48() * 2000);
        uint64_t vseed = (uint64_t)lrand48() << 20 | (unsigned)i | 1;
        step = "fork";
        alarm(HANG_SECONDS);
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork errno %d", errno);
            break;
        }
        if (pid == 0) {
            alarm(0);
            setpgid(0, 0);
            crng = vseed;
            hammer(0, pa);
        }
        setpgid(pid, pid);
        alarm(0);
        spin_us(delay);
        step = "kill and reap";
        alarm(HANG_SECONDS);
        killed += kill_and_reap(pid);
        alarm(0);
        verify(i);
        checks++;
        done++;
    }

    /* clean up: remove every segment, detach, and the namespace must be empty */
    alarm(HANG_SECONDS);
    step = "cleanup";
    struct shminfo info;
    int max = shmctl(0, IPC_INFO, (struct shmid_ds *)&info);
    for (int i = 0; i <= max; i++) {
        struct shmid_ds d;
        int sid = shmctl(i, SHM_STAT_ANY, &d);
        if (sid >= 0 && shmctl(sid, IPC_RMID, NULL) != 0) fail("cleanup: IPC_RMID(%d) errno %d", sid, errno);
    }
    if (shmdt(pa) || shmdt(pb)) fail("cleanup: shmdt(P) errno %d", errno);
    struct shm_info si;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r < 0 || si.used_ids != 0) fail("cleanup: SHM_INFO = %d, used_ids %d after removing everything", r, si.used_ids);
    if (shmshim_bin) run_check(-1);
    alarm(0);

    printf("crash: %d iterations in %.1f s, %d victims killed by SIGKILL, %lu victim operations, %d checks, %d failures\n",
           done, now_s() - t0, killed, *victim_ops, checks, failures);
    if (done < iters && done < 20) {
        printf("FAIL only %d iterations ran\n", done);
        return 1;
    }
    return failures ? 1 : 0;
}
