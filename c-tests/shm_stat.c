/* shm_stat — S102 S103 S104 S105 S114 S113
 * SHM_STAT / SHM_STAT_ANY take an index (low 15 bits; seq bits ignored),
 * fill the struct like IPC_STAT and return the full id; empty index →
 * EINVAL even with a NULL buf, occupied index with NULL buf → EFAULT;
 * SHM_STAT needs read permission, SHM_STAT_ANY none; SHM_DEST segments are
 * listed with key 0.
 */
#include "common.h"

#define K1 0x5EED0701

static int g_ids[2];

static void stat_idx(const char *s, int cmd, int idx)
{
    struct shmid_ds d;
    poison(&d, sizeof d);
    errno = 0;
    int r = shmctl(idx, cmd, &d);
    const char *c = cmd == SHM_STAT ? "SHM_STAT" : "SHM_STAT_ANY";
    if (r == -1)
        out("%s %s(%d) = -1 %s", s, c, idx, errname(errno));
    else {
        char lbl[64];
        snprintf(lbl, sizeof lbl, "%s(%d) = %d", c, idx, r);
        print_ds(s, lbl, &d);
    }
}

static void child_nobody(void *arg)
{
    (void)arg;
    become(65534, 65534, 0, NULL);
    stat_idx("S104 nobody", SHM_STAT, g_ids[0] & 32767);
    stat_idx("S104 nobody", SHM_STAT_ANY, g_ids[0] & 32767);
    stat_idx("S104 nobody", SHM_STAT, g_ids[1] & 32767);
    stat_idx("S104 nobody", SHM_STAT_ANY, g_ids[1] & 32767);
    T("S104 nobody", shmctl(g_ids[0], IPC_STAT, &(struct shmid_ds){0}));
    T("S104 nobody", shmctl(g_ids[1], IPC_STAT, &(struct shmid_ds){0}));
    stat_idx("S104 nobody empty", SHM_STAT, 20);
    stat_idx("S104 nobody empty", SHM_STAT_ANY, 20);
    /* S114: IPC_INFO and SHM_INFO need no permission */
    struct shminfo si;
    T("S114 nobody", shmctl(0, IPC_INFO, (struct shmid_ds *)&si));
    info_print("S114 nobody", "SHM_INFO");
}

int main(void)
{
    /* give the ids a seq of 1 */
    for (int i = 0; i < 66; i++) {
        int t = shmget(IPC_PRIVATE, 1, 0600);
        if (t == -1 || shmctl(t, IPC_RMID, NULL) == -1) { out("FATAL setup"); return 1; }
    }
    int a = T("S102", shmget(K1, 777, IPC_CREAT | 0600));
    int b = T("S102", shmget(IPC_PRIVATE, 888, 0604));
    g_ids[0] = a;
    g_ids[1] = b;

    /* S102 */
    stat_idx("S102", SHM_STAT, a & 32767);
    stat_idx("S102", SHM_STAT_ANY, a & 32767);
    stat_idx("S102 seq bits ignored", SHM_STAT, (a & 32767) + 5 * 32768);
    stat_idx("S102 seq bits ignored", SHM_STAT_ANY, a);
    stat_idx("S102", SHM_STAT, b & 32767);
    stat_idx("S102 high bits", SHM_STAT, (b & 32767) | 0x40000000);

    /* S103 */
    stat_idx("S103 empty", SHM_STAT, 0);
    stat_idx("S103 empty", SHM_STAT_ANY, 5);
    stat_idx("S103 empty", SHM_STAT, 32767);
    stat_idx("S103 empty", SHM_STAT, 40000);
    T("S103", shmctl(0, SHM_STAT, NULL));
    T("S103", shmctl(7, SHM_STAT_ANY, NULL));
    T("S103", shmctl(a & 32767, SHM_STAT, NULL));
    T("S103", shmctl(a & 32767, SHM_STAT_ANY, NULL));
    T("S103", shmctl(a & 32767, SHM_STAT, (struct shmid_ds *)unmapped_addr()));
    T("S103", shmctl(-1, SHM_STAT, NULL));

    /* S104: permission */
    in_child("child1", child_nobody, NULL);

    /* S105: SHM_DEST shows with key 0 */
    char *p = A("S105", shmat(a, NULL, 0), NULL);
    T("S105", shmctl(a, IPC_RMID, NULL));
    stat_idx("S105", SHM_STAT, a & 32767);
    stat_idx("S105", SHM_STAT_ANY, a & 32767);
    if (p != FAILED) T("S105", shmdt(p));
    stat_idx("S105 destroyed", SHM_STAT, a & 32767);

    /* S113: root SHM_STAT on mode 0000 */
    int z = T("S113", shmget(IPC_PRIVATE, 1, 0));
    stat_idx("S113", SHM_STAT, z & 32767);
    T("cleanup", shmctl(z, IPC_RMID, NULL));
    T("cleanup", shmctl(b, IPC_RMID, NULL));
    return 0;
}
