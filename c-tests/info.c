/* info — S98 S99 S100 S101 S25 S6 S15
 * IPC_INFO (struct shminfo from the namespace limits, returns the highest
 * index in use, id ignored unless negative, EFAULT for bad buffers) and
 * SHM_INFO (used_ids, shm_tot in pages rounded up per segment, resident and
 * swapped pages, zero swap counters, same return value).
 */
#include "common.h"

static void ipc_info(const char *s)
{
    struct shminfo si;
    poison(&si, sizeof si);
    errno = 0;
    int r = shmctl(0, IPC_INFO, (struct shmid_ds *)&si);
    if (r == -1) {
        out("%s IPC_INFO = -1 %s", s, errname(errno));
        return;
    }
    out("%s IPC_INFO = %d shmmax=%lu shmmin=%lu shmmni=%lu shmseg=%lu shmall=%lu"
        " unused=%lu,%lu,%lu,%lu",
        s, r, si.shmmax, si.shmmin, si.shmmni, si.shmseg, si.shmall, si.__glibc_reserved1,
        si.__glibc_reserved2, si.__glibc_reserved3, si.__glibc_reserved4);
}

static void shm_info_full(const char *s)
{
    struct shm_info si;
    poison(&si, sizeof si);
    errno = 0;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    if (r == -1) {
        out("%s SHM_INFO = -1 %s", s, errname(errno));
        return;
    }
    out("%s SHM_INFO = %d used_ids=%d shm_tot=%lu shm_rss=%lu shm_swp=%lu"
        " swap_attempts=%lu swap_successes=%lu",
        s, r, si.used_ids, si.shm_tot, si.shm_rss, si.shm_swp, si.swap_attempts,
        si.swap_successes);
}

int main(void)
{
    struct shminfo si;
    struct shm_info sinfo;

    /* S99: empty namespace → 0 */
    ipc_info("S98 S99 empty");
    shm_info_full("S101 empty");

    /* S100: id ignored unless negative; bad buffers */
    T("S100", shmctl(98765, IPC_INFO, (struct shmid_ds *)&si));
    T("S100", shmctl(2147483647, IPC_INFO, (struct shmid_ds *)&si));
    T("S100", shmctl(98765, SHM_INFO, (struct shmid_ds *)&sinfo));
    T("S100", shmctl(0, IPC_INFO, NULL));
    T("S100", shmctl(0, IPC_INFO, (struct shmid_ds *)unmapped_addr()));
    T("S101", shmctl(0, SHM_INFO, NULL));
    T("S101", shmctl(0, SHM_INFO, (struct shmid_ds *)unmapped_addr()));
    T("S100", shmctl(-5, IPC_INFO, NULL));
    T("S101", shmctl(-5, SHM_INFO, NULL));

    /* S25 S101: sizes 1, 4096, 4097, 10*4096 → pages 1+1+2+10 */
    int a = T("S101", shmget(IPC_PRIVATE, 1, 0600));
    int b = T("S101", shmget(IPC_PRIVATE, 4096, 0600));
    int c = T("S101", shmget(IPC_PRIVATE, 4097, 0600));
    int d = T("S101", shmget(0x5EED0601, 10 * 4096, IPC_CREAT | 0600));
    ipc_info("S99 four");
    shm_info_full("S25 S101 four");

    /* S101: resident pages follow touches */
    char *p = A("S101", shmat(d, NULL, 0), NULL);
    if (p != FAILED) {
        p[0] = 1;
        p[4096 * 3] = 1;
        p[4096 * 9 + 5] = 1;
        shm_info_full("S101 three pages touched");
    }
    char *q = A("S101", shmat(c, NULL, SHM_RDONLY), NULL);
    if (q != FAILED) {
        volatile char x = q[4096];
        (void)x;
        shm_info_full("S101 read of a hole");
        T("S101", shmdt(q));
    }

    /* S99: highest index; SHM_DEST counts; falls when highest removed */
    T("S99", shmctl(d, IPC_RMID, NULL));
    ipc_info("S99 highest is SHM_DEST");
    shm_info_full("S99 S101 SHM_DEST counted");
    if (p != FAILED) T("S99", shmdt(p));
    ipc_info("S99 highest removed");
    shm_info_full("S101 after destroy");
    T("S99", shmctl(b, IPC_RMID, NULL));
    ipc_info("S99 hole");
    T("S99", shmctl(c, IPC_RMID, NULL));
    ipc_info("S99 only index 0");
    T("S99", shmctl(a, IPC_RMID, NULL));
    ipc_info("S99 empty again");
    shm_info_full("S101 empty again");
    int e = T("S99", shmget(IPC_PRIVATE, 1, 0600));
    ipc_info("S99 next index");
    T("cleanup", shmctl(e, IPC_RMID, NULL));
    return 0;
}
