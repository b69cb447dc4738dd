/* ids — S7 S8 S9 S10 S12 S13 S14 S15 S22 S81
 * Id layout (seq*32768+idx), first ids in a fresh namespace, cyclic
 * allocation inside the 64-slot minimum window with seq bumped on wrap, the
 * 130-cycle sequence of S10, stale ids and wrong-seq ids → EINVAL (never
 * EIDRM), negative ids → EINVAL for shmat and every shmctl command.
 */
#include "common.h"

static void show_id(const char *s, int id)
{
    struct shmid_ds d;
    poison(&d, sizeof d);
    if (shmctl(id, IPC_STAT, &d) == -1)
        out("%s id=%d IPC_STAT = -1 %s", s, id, errname(errno));
    else
        out("%s id=%d idx=%d seq=%d __seq=%u", s, id, id & 32767, id >> 15, d.shm_perm.__seq);
}

/* Print a list of ids as ranges of consecutive values. */

static void all_stale(const char *s, int id)
{
    struct shmid_ds d;
    memset(&d, 0, sizeof d);
    d.shm_perm.mode = 0600;
    char lbl[96];
    snprintf(lbl, sizeof lbl, "shmctl(%d, IPC_STAT, &d)", id);
    TL(s, lbl, shmctl(id, IPC_STAT, &d));
    snprintf(lbl, sizeof lbl, "shmctl(%d, IPC_SET, &d)", id);
    TL(s, lbl, shmctl(id, IPC_SET, &d));
    snprintf(lbl, sizeof lbl, "shmctl(%d, SHM_LOCK, NULL)", id);
    TL(s, lbl, shmctl(id, SHM_LOCK, NULL));
    snprintf(lbl, sizeof lbl, "shmctl(%d, SHM_UNLOCK, NULL)", id);
    TL(s, lbl, shmctl(id, SHM_UNLOCK, NULL));
    snprintf(lbl, sizeof lbl, "shmctl(%d, IPC_RMID, NULL)", id);
    TL(s, lbl, shmctl(id, IPC_RMID, NULL));
    errno = 0;
    void *p = shmat(id, NULL, 0);
    out("%s shmat(%d, NULL, 0) = %s", s, id, addr_desc(p, NULL));
    if (p != FAILED)
        shmdt(p);
}

int main(void)
{
    /* S8: first three creations in a fresh namespace */
    int a = T("S8", shmget(IPC_PRIVATE, 100, 0600));
    int b = T("S8", shmget(IPC_PRIVATE, 100, 0600));
    int c = T("S8", shmget(IPC_PRIVATE, 100, 0600));
    show_id("S8", a);
    show_id("S8", b);
    show_id("S8", c);

    /* S9: cyclic, not lowest-free */
    T("S9", shmctl(a, IPC_RMID, NULL));
    int d = T("S9", shmget(IPC_PRIVATE, 100, 0600));
    show_id("S9", d);

    /* S13: a removed id whose slot is empty */
    all_stale("S13 empty-slot", a);

    /* S14: right idx, wrong seq */
    all_stale("S14 id+32768", b + 32768);
    all_stale("S14 id+5*32768", b + 5 * 32768);
    show_id("S14 live id still fine", b);

    /* S15: negative ids */
    struct shmid_ds ds;
    struct shminfo si;
    struct shm_info sinfo;
    T("S15", shmctl(-1, IPC_STAT, &ds));
    T("S15", shmctl(-1, IPC_SET, &ds));
    T("S15", shmctl(-1, IPC_RMID, NULL));
    T("S15", shmctl(-1, IPC_INFO, (struct shmid_ds *)&si));
    T("S15", shmctl(-1, SHM_INFO, (struct shmid_ds *)&sinfo));
    T("S15", shmctl(-1, SHM_STAT, &ds));
    T("S15", shmctl(-1, SHM_STAT_ANY, &ds));
    T("S15", shmctl(-1, SHM_LOCK, NULL));
    T("S15", shmctl(-1, SHM_UNLOCK, NULL));
    T("S15", shmctl(-2147483647 - 1, IPC_STAT, &ds));
    T("S15", shmctl(-2147483647 - 1, IPC_INFO, (struct shmid_ds *)&si));
    A("S15", shmat(-1, NULL, 0), NULL);
    A("S15", shmat(-2147483647 - 1, NULL, SHM_RDONLY), NULL);

    /* remove everything: in_use = 0, last idx = 3 */
    T("S10", shmctl(b, IPC_RMID, NULL));
    T("S10", shmctl(c, IPC_RMID, NULL));
    T("S10", shmctl(d, IPC_RMID, NULL));

    /* S10: 130 create/remove cycles: 4..63, 32768..32831, 65536.. */
    int v[130];
    for (int i = 0; i < 130; i++) {
        v[i] = shmget(IPC_PRIVATE, 1, 0600);
        if (v[i] == -1) {
            out("S10 cycle %d shmget = -1 %s", i, errname(errno));
            continue;
        }
        if (i == 60 || i == 61 || i == 125)
            show_id("S10 S81", v[i]);
        if (shmctl(v[i], IPC_RMID, NULL) == -1)
            out("S10 cycle %d IPC_RMID = -1 %s", i, errname(errno));
    }
    print_ranges("S10", v, 130);

    /* S12 S13: every one of those ids is now stale.  The next creation takes
     * idx 6 with seq 2; ids 6 (seq 0) and 32774 (seq 1) named that slot before. */
    int e = T("S12", shmget(IPC_PRIVATE, 1, 0600));
    show_id("S12 reused slot", e);
    all_stale("S13 reused-slot(seq0)", e & 32767);
    all_stale("S13 reused-slot(seq1)", (e & 32767) + 32768);
    show_id("S13 live id still fine", e);
    T("S13", shmctl(e, IPC_RMID, NULL));
    return 0;
}
