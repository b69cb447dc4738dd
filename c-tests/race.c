/* race — S22 S34 S8 S69 S101 S125 (concurrency: no lost update)
 * Many processes and threads at once: IPC_CREAT|IPC_EXCL on one key has
 * exactly one winner; concurrent IPC_PRIVATE creations all get distinct ids
 * and SHM_INFO counts them all; concurrent shmat/shmdt leave nattch exact;
 * atomic increments through separate attaches all land in the segment.
 */
#include "common.h"
#include <pthread.h>

#define NPROC 8
#define NTHR 4
#define NCREATE 25
#define NATTACH 100

struct shared {
    int go;
    int created[NPROC * NTHR * NCREATE];
    int excl_ok, excl_eexist, excl_other;
    int attach_errors;
};

static struct shared *sh;
static int g_id;
static int g_proc;

static void wait_go(void)
{
    while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
        usleep(100);
}

static void *creator(void *arg)
{
    long t = (long)arg;
    for (int i = 0; i < NCREATE; i++)
        sh->created[(g_proc * NTHR + t) * NCREATE + i] = shmget(IPC_PRIVATE, 1, 0600);
    return NULL;
}

static void *attacher(void *arg)
{
    (void)arg;
    for (int i = 0; i < NATTACH; i++) {
        long *p = shmat(g_id, NULL, 0);
        if (p == FAILED) {
            __atomic_fetch_add(&sh->attach_errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
        if (shmdt(p) == -1) __atomic_fetch_add(&sh->attach_errors, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void run_procs(void *(*fn)(void *), int excl)
{
    pid_t pids[NPROC];
    __atomic_store_n(&sh->go, 0, __ATOMIC_RELEASE);
    fflush(stdout);
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            g_proc = i;
            wait_go();
            if (excl) {
                int r = shmget(0x5EED0C01, 100, IPC_CREAT | IPC_EXCL | 0600);
                if (r != -1) __atomic_fetch_add(&sh->excl_ok, 1, __ATOMIC_RELAXED);
                else if (errno == EEXIST) __atomic_fetch_add(&sh->excl_eexist, 1, __ATOMIC_RELAXED);
                else __atomic_fetch_add(&sh->excl_other, 1, __ATOMIC_RELAXED);
                exit(0);
            }
            pthread_t th[NTHR];
            for (long t = 0; t < NTHR; t++)
                pthread_create(&th[t], NULL, fn, (void *)t);
            for (int t = 0; t < NTHR; t++)
                pthread_join(th[t], NULL);
            exit(0);
        }
    }
    __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < NPROC; i++)
        reap(pids[i], "worker");
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;

    /* S34: one winner */
    run_procs(NULL, 1);
    out("S34 race IPC_EXCL: ok=%d eexist=%d other=%d", sh->excl_ok, sh->excl_eexist, sh->excl_other);
    int k = T("S34", shmget(0x5EED0C01, 0, 0));
    T("S34", shmctl(k, IPC_RMID, NULL));

    /* S22: concurrent creations */
    run_procs(creator, 0);
    int n = NPROC * NTHR * NCREATE, fails = 0, dups = 0;
    int *v = malloc(n * sizeof(int));
    memcpy(v, sh->created, n * sizeof(int));
    qsort(v, n, sizeof(int), cmp_int);
    for (int i = 0; i < n; i++) {
        if (v[i] == -1) fails++;
        else if (i > 0 && v[i] == v[i - 1]) dups++;
    }
    out("S22 concurrent creations: %d, failed=%d, duplicate ids=%d", n, fails, dups);
    out("S8 lowest id = %d, highest id = %d", v[fails], v[n - 1]);
    info_print("S101", "after concurrent creations");
    int rmfail = 0;
    for (int i = fails; i < n; i++)
        if (shmctl(v[i], IPC_RMID, NULL) == -1) rmfail++;
    out("S22 IPC_RMID failures = %d", rmfail);
    info_print("S101", "after removal");
    free(v);

    /* S69 S125: concurrent attach/detach and increments */
    g_id = T("S69", shmget(IPC_PRIVATE, PAGE, 0600));
    long *mine = A("S69", shmat(g_id, NULL, 0), NULL);
    if (mine == FAILED) return 1;
    run_procs(attacher, 0);
    out("S69 attach errors = %d", sh->attach_errors);
    out("S69 increments seen = %ld (expected %d)", *mine, NPROC * NTHR * NATTACH);
    print_nattch("S69", "after all workers", g_id);
    T("cleanup", shmdt(mine));
    T("cleanup", shmctl(g_id, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
