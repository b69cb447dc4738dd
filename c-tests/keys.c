/* keys — S17 S18 S22 S26 S27 S28 S29 S30 S31 S32 S34 S44 S94 S160
 * Creation and lookup by key: IPC_PRIVATE always creates, negative keys are
 * ordinary, lookups return the same id whatever size/mode they pass, the size
 * check on lookup, IPC_EXCL alone ignored, EEXIST precedence, ENOENT for an
 * absent key and for a key whose segment is SHM_DEST, and re-creation of such
 * a key while the old segment is still attached.
 */
#include "common.h"

#define K1 0x5EED0001
#define K2 0x5EED0002
#define KNEG (-1)
#define KHIGH ((key_t)0x80000001)

static void mode_of(const char *s, int id)
{
    struct shmid_ds d;
    if (shmctl(id, IPC_STAT, &d) == -1)
        out("%s id=%d IPC_STAT = -1 %s", s, id, errname(errno));
    else
        out("%s id=%d key=%d mode=%04o segsz=%zu", s, id, d.shm_perm.__key, d.shm_perm.mode,
            d.shm_segsz);
}

int main(void)
{
    /* S32: absent key, no IPC_CREAT */
    T("S32", shmget(K1, 0, 0));
    T("S32", shmget(K1, 100, 0600));
    T("S32", shmget(K1, SIZE_MAX, 0));
    T("S32", shmget(K1, 0, IPC_EXCL));
    T("S32", shmget(KNEG, 0, 0));

    /* S22: IPC_PRIVATE always creates, IPC_CREAT not needed, IPC_EXCL no effect */
    int p1 = T("S22", shmget(IPC_PRIVATE, 10, 0600));
    int p2 = T("S22", shmget(IPC_PRIVATE, 10, 0600 | IPC_CREAT | IPC_EXCL));
    int p3 = T("S22", shmget(IPC_PRIVATE, 10, IPC_EXCL | 0640));
    mode_of("S22", p1);
    mode_of("S22", p2);
    mode_of("S22", p3);
    /* S18: key 0 is never looked up */
    T("S18", shmget(IPC_PRIVATE, 0, 0));

    /* S27 S28 S29 S30 */
    int k1 = T("S27", shmget(K1, 4097, IPC_CREAT | 0640));
    T("S27", shmget(K1, 4097, IPC_CREAT | 0600));
    T("S27", shmget(K1, 1, 0));
    T("S27", shmget(K1, 100, 0777));
    T("S27", shmget(K1, 0, IPC_CREAT | 0666));
    mode_of("S27 mode unchanged", k1);
    T("S28", shmget(K1, 0, IPC_EXCL));
    T("S28", shmget(K1, 10, IPC_EXCL | 0600));
    T("S29", shmget(K1, 0, 0));
    T("S30", shmget(K1, 4097, 0));
    T("S30", shmget(K1, 4098, 0));
    T("S30", shmget(K1, 8192, IPC_CREAT | 0600));
    T("S30", shmget(K1, SIZE_MAX, 0));
    mode_of("S30 unchanged", k1);

    /* S34 S44: EEXIST before the size check (and before permissions) */
    T("S34", shmget(K1, 0, IPC_CREAT | IPC_EXCL | 0600));
    T("S34", shmget(K1, 4098, IPC_CREAT | IPC_EXCL | 0600));
    T("S34", shmget(K1, SIZE_MAX, IPC_CREAT | IPC_EXCL));
    T("S34", shmget(K1, 1, IPC_CREAT | IPC_EXCL | 0777));

    /* S17: negative and high keys are ordinary keys */
    int kn = T("S17", shmget(KNEG, 10, IPC_CREAT | 0600));
    T("S17", shmget(KNEG, 0, 0));
    T("S17", shmget(KNEG, 10, IPC_CREAT | IPC_EXCL | 0600));
    mode_of("S17", kn);
    int kh = T("S17", shmget(KHIGH, 10, IPC_CREAT | 0600));
    T("S17", shmget(KHIGH, 0, 0));
    mode_of("S17", kh);
    T("S17", shmget(0x7fffffff, 0, 0));

    /* S26: only the low 9 bits become the mode */
    int m1 = T("S26", shmget(K2, 10, IPC_CREAT | IPC_EXCL | 0x40000000 | 0777));
    mode_of("S26", m1);
    T("S26", shmctl(m1, IPC_RMID, NULL));
    int m2 = T("S26", shmget(K2, 10, IPC_CREAT | SHM_NORESERVE | 0x20000000 | 0444));
    mode_of("S26", m2);
    T("S26", shmctl(m2, IPC_RMID, NULL));
    int m3 = T("S26", shmget(IPC_PRIVATE, 10, 0x7ffff000 & ~SHM_HUGETLB));
    mode_of("S26", m3);
    T("S26", shmctl(m3, IPC_RMID, NULL));

    /* S31 S94 S160: SHM_DEST segment cannot be found by key; key can be reused */
    void *at = A("S31", shmat(k1, NULL, 0), NULL);
    if (at != FAILED) strcpy((char *)at, "old");
    T("S31", shmctl(k1, IPC_RMID, NULL));
    mode_of("S31 after IPC_RMID", k1);
    T("S31", shmget(K1, 0, 0));
    T("S31", shmget(K1, 10, 0600));
    int k1b = T("S31", shmget(K1, 50, IPC_CREAT | IPC_EXCL | 0600));
    out("S31 new id differs = %s", k1b != k1 ? "yes" : "no");
    T("S31", shmget(K1, 0, 0));
    T("S31", shmget(K1, 50, IPC_CREAT | 0600));
    mode_of("S31 old", k1);
    mode_of("S31 new", k1b);
    char *at2 = A("S31", shmat(k1b, NULL, 0), NULL);
    if (at != FAILED && at2 != FAILED)
        out("S31 old memory kept = %s, new memory zero = %s",
            strcmp((char *)at, "old") == 0 ? "yes" : "no", at2[0] == 0 ? "yes" : "no");
    if (at2 != FAILED) T("S31", shmdt(at2));
    if (at != FAILED) T("S31", shmdt(at));
    mode_of("S31 old after last detach", k1);

    T("cleanup", shmctl(k1b, IPC_RMID, NULL));
    T("cleanup", shmctl(kn, IPC_RMID, NULL));
    T("cleanup", shmctl(kh, IPC_RMID, NULL));
    T("cleanup", shmctl(p1, IPC_RMID, NULL));
    T("cleanup", shmctl(p2, IPC_RMID, NULL));
    T("cleanup", shmctl(p3, IPC_RMID, NULL));
    T("S32 after cleanup", shmget(KNEG, 0, 0));
    info_print("cleanup", "end");
    return 0;
}
