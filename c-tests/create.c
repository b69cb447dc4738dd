/* create — S23 S24 S25 S33 S40 S41 S43 S48 S3 S101
 * What a new segment looks like (every IPC_STAT field), zero-filled memory to
 * the end of the last page, requested segsz kept while accounting rounds up
 * to pages, creation size errors (0, > shmmax, > MAX_LFS_FILESIZE), commit
 * accounting ENOMEM and SHM_NORESERVE, and the order of those checks.
 */
#include "common.h"

#define K1 0x5EED0101
#define K2 0x5EED0102

static const size_t LFS_MAX = 0x7fffffffffffffffUL; /* MAX_LFS_FILESIZE */
static const size_t PIB = 1UL << 50;                 /* 1 PiB: cannot be committed */

int main(void)
{
    /* S23: a fresh segment, every field */
    int a = T("S23", shmget(K1, 4097, IPC_CREAT | IPC_EXCL | 0640));
    stat_print("S23", "new keyed", a);
    int b = T("S23", shmget(IPC_PRIVATE, 1, 0604));
    stat_print("S23", "new private", b);

    /* S25: segsz 4097 is 2 pages of accounting, segsz 1 one page */
    info_print("S25", "two segments");

    /* S24: every byte reads zero up to the end of the last page */
    unsigned char *p = A("S24", shmat(a, NULL, 0), NULL);
    if (p != FAILED) {
        size_t nz = 0;
        for (size_t i = 0; i < 2 * PAGE; i++)
            nz += p[i] != 0;
        out("S24 nonzero bytes in 8192 = %zu", nz);
        T("S24", shmdt(p));
    }

    /* S33: size 0 or > shmmax on creation → EINVAL */
    T("S33", shmget(IPC_PRIVATE, 0, 0600));
    T("S33", shmget(K2, 0, IPC_CREAT | 0600));
    T("S33", shmget(IPC_PRIVATE, SIZE_MAX, 0600));
    T("S33", shmget(IPC_PRIVATE, 18446744073692774400UL, 0600)); /* shmmax + 1 */
    T("S33", shmget(K2, SIZE_MAX, IPC_CREAT | SHM_NORESERVE | 0600));
    T("S33 key not created", shmget(K2, 0, 0));

    /* S40: above MAX_LFS_FILESIZE → EINVAL even with SHM_NORESERVE */
    T("S40", shmget(IPC_PRIVATE, LFS_MAX + 1, SHM_NORESERVE | 0600));
    T("S40", shmget(IPC_PRIVATE, LFS_MAX + 4096, SHM_NORESERVE | 0600));
    T("S40", shmget(IPC_PRIVATE, LFS_MAX + 1, 0600));
    int big = T("S40", shmget(IPC_PRIVATE, LFS_MAX, SHM_NORESERVE | 0600));
    if (big != -1) {
        struct shmid_ds d;
        if (shmctl(big, IPC_STAT, &d) == 0)
            out("S40 segsz=%zu mode=%04o", d.shm_segsz, d.shm_perm.mode);
        info_print("S40", "with 2^63-1");
        T("S40", shmctl(big, IPC_RMID, NULL));
    }

    /* S41: 1 PiB cannot be committed → ENOMEM; SHM_NORESERVE skips accounting */
    T("S41", shmget(IPC_PRIVATE, PIB, 0600));
    T("S41", shmget(K2, PIB, IPC_CREAT | 0600));
    T("S41 key not created", shmget(K2, 0, 0));
    int nr = T("S41", shmget(IPC_PRIVATE, PIB, SHM_NORESERVE | 0600));
    if (nr != -1) {
        struct shmid_ds d;
        /* S48: SHM_NORESERVE leaves no trace in the mode */
        if (shmctl(nr, IPC_STAT, &d) == 0)
            out("S41 S48 segsz=%zu mode=%04o", d.shm_segsz, d.shm_perm.mode);
        info_print("S41", "with 1 PiB");
        T("S41", shmctl(nr, IPC_RMID, NULL));
    }
    /* S41 S3: SHM_NORESERVE also with meaningless huge-size bits (no SHM_HUGETLB) */
    int nr2 = T("S3", shmget(IPC_PRIVATE, PIB, SHM_NORESERVE | (30 << 26) | 0600));
    if (nr2 != -1) T("S3", shmctl(nr2, IPC_RMID, NULL));

    /* S43: EINVAL (size) before ENOMEM (accounting); ENOENT before everything */
    T("S43", shmget(K2, 0, 0));
    T("S43", shmget(K2, SIZE_MAX, 0));
    T("S43", shmget(K2, LFS_MAX + 1, IPC_CREAT | 0600));
    T("S43", shmget(IPC_PRIVATE, SIZE_MAX - 100, 0600));

    /* the memory of a big NORESERVE segment is usable where touched */
    int sp = T("S41", shmget(IPC_PRIVATE, 1UL << 40, SHM_NORESERVE | 0600));
    if (sp != -1) {
        char *q = A("S41", shmat(sp, NULL, 0), NULL);
        if (q != FAILED) {
            q[0] = 1;
            q[(1UL << 40) - 1] = 2;
            out("S41 1 TiB NORESERVE touch ends = %d %d", q[0], q[(1UL << 40) - 1]);
            T("S41", shmdt(q));
        }
        T("S41", shmctl(sp, IPC_RMID, NULL));
    }

    T("cleanup", shmctl(a, IPC_RMID, NULL));
    T("cleanup", shmctl(b, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
