/* ipc_stat — S79 S80 S81 S84 S85 S86 S23 S113
 * IPC_STAT writes the whole struct (reserved words 0), mode shows SHM_LOCKED
 * and SHM_DEST, __seq == id>>15, EFAULT for NULL / unmapped / read-only /
 * partly mapped buffers but EINVAL first for bad ids, cpid kept after the
 * creator exits, IPC_STAT/IPC_SET from another process leave atime and lpid.
 */
#include "common.h"

#define K1 0x5EED0401
#define K2 0x5EED0402

static int g_id;

static void child_create(void *arg)
{
    (void)arg;
    int id = shmget(K2, 3000, IPC_CREAT | IPC_EXCL | 0644);
    out("S85 child: shmget = %s", id == -1 ? errname(errno) : "ok");
}

static void child_stat_set(void *arg)
{
    (void)arg;
    struct shmid_ds d;
    if (shmctl(g_id, IPC_STAT, &d) == -1) out("S86 child IPC_STAT = -1 %s", errname(errno));
    d.shm_perm.mode = 0640;
    if (shmctl(g_id, IPC_SET, &d) == -1) out("S86 child IPC_SET = -1 %s", errname(errno));
    out("S86 child: lpid seen = %s", pidname(d.shm_lpid));
}

int main(void)
{
    /* make the first id have seq 1 so that S81 is meaningful */
    for (int i = 0; i < 64; i++) {
        int t = shmget(IPC_PRIVATE, 1, 0600);
        if (t == -1 || shmctl(t, IPC_RMID, NULL) == -1) { out("FATAL setup"); return 1; }
    }
    int id = T("S81", shmget(K1, 12345, IPC_CREAT | 0644));
    g_id = id;

    /* S79 S81: whole struct */
    stat_print("S79 S81", "fresh", id);

    /* S80: SHM_LOCKED and SHM_DEST in mode */
    T("S80", shmctl(id, SHM_LOCK, NULL));
    stat_short("S80", "locked", id);
    char *p = A("S80", shmat(id, NULL, 0), NULL);
    T("S80", shmctl(id, IPC_RMID, NULL));
    stat_short("S80", "locked+dest", id);
    T("S80", shmctl(id, SHM_UNLOCK, NULL));
    stat_short("S80", "dest", id);
    stat_print("S79", "attached+dest", id);

    /* S84: bad buffers */
    T("S84", shmctl(id, IPC_STAT, NULL));
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)unmapped_addr()));
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)1));
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)0xffff800000000000UL));
    char *ro = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)ro));
    /* a buffer that runs into an unmapped page */
    char *two = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two + PAGE, PAGE);
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)(two + PAGE - 50)));
    T("S84", shmctl(id, IPC_STAT, (struct shmid_ds *)(two + PAGE - sizeof(struct shmid_ds))));
    munmap(two, PAGE);
    munmap(ro, PAGE);
    /* S84: lookup errors first */
    T("S84", shmctl(id + 32768, IPC_STAT, NULL));
    T("S84", shmctl(-1, IPC_STAT, NULL));
    T("S84", shmctl(4000, IPC_STAT, NULL));
    if (p != FAILED) T("S84", shmdt(p));
    T("S84 destroyed", shmctl(id, IPC_STAT, NULL));

    /* S85: cpid survives the creator */
    in_child("child1", child_create, NULL);
    int k2 = T("S85", shmget(K2, 0, 0));
    stat_print("S85", "created by exited child", k2);

    /* S86: IPC_STAT and IPC_SET from another process change neither atime nor lpid */
    g_id = k2;
    char *q = A("S86", shmat(k2, NULL, 0), NULL);
    if (q != FAILED) T("S86", shmdt(q));
    in_child("child2", child_stat_set, NULL);
    stat_print("S86", "after child IPC_STAT/IPC_SET", k2);
    T("cleanup", shmctl(k2, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
