/* ipc_set — S87 S88 S89 S90 S91 S115 S116
 * IPC_SET copies uid, gid and the low 9 mode bits and nothing else, keeps
 * SHM_LOCKED, sets ctime; ownership rule (euid == uid or cuid, or
 * CAP_SYS_ADMIN) else EPERM, creator keeps the right after giving the
 * segment away; unmapped uid/gid → EINVAL after the ownership check; buf is
 * copied in before the id lookup (EFAULT beats EINVAL, negative id excepted).
 */
#include "common.h"

#define g_id (shared_ints()[0])

static void set_mode(const char *s, int id, uid_t uid, gid_t gid, mode_t mode)
{
    struct shmid_ds d;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        /* unprivileged callers may lack read permission: build the buf */
        memset(&d, 0, sizeof d);
    }
    d.shm_perm.uid = uid;
    d.shm_perm.gid = gid;
    d.shm_perm.mode = mode;
    char lbl[96];
    snprintf(lbl, sizeof lbl, "IPC_SET(uid=%d gid=%d mode=%04o)", (int)uid, (int)gid, mode);
    TL(s, lbl, shmctl(id, IPC_SET, &d));
}

/* uid 1001 creates, gives the segment to 1002, still controls it */
static void child_creator(void *arg)
{
    (void)arg;
    become(1001, 2001, 0, NULL);
    int id = T("S88 uid1001", shmget(IPC_PRIVATE, 100, 0600));
    g_id = id;
    set_mode("S88 uid1001 creator", id, 1002, 2002, 0640);
    set_mode("S88 uid1001 creator again", id, 1002, 2002, 0604);
    set_mode("S88 S89 uid1001 unmapped uid", id, (uid_t)-1, 2002, 0604);
    T("S88 uid1001", shmctl(id, IPC_STAT, &(struct shmid_ds){0}));
    out("S88 child: id=%d", id);
}

static void child_other(void *arg)
{
    (void)arg;
    become(1003, 2003, 0, NULL);
    set_mode("S88 uid1003", g_id, 1003, 2003, 0666);
    set_mode("S88 S89 uid1003 unmapped uid", g_id, (uid_t)-1, 2003, 0666);
    T("S88 uid1003", shmctl(g_id, IPC_RMID, NULL));
}

static void child_new_owner(void *arg)
{
    (void)arg;
    become(1002, 2002, 0, NULL);
    set_mode("S88 uid1002 owner", g_id, 1002, 2002, 0600);
}

int main(void)
{
    shared_ints();
    int id = T("setup", shmget(0x5EED0501, 100, IPC_CREAT | 0640));
    struct shmid_ds d, before;
    MUST(shmctl(id, IPC_STAT, &before));
    T("setup", shmctl(id, SHM_LOCK, NULL));
    next_second();

    /* S87: only uid, gid, low mode bits; everything else ignored */
    memset(&d, 0x5a, sizeof d);
    d.shm_perm.uid = 1001;
    d.shm_perm.gid = 2001;
    d.shm_perm.mode = 07777 | SHM_DEST | 0xff0000;
    d.shm_perm.__key = 42;
    d.shm_perm.cuid = 7;
    d.shm_perm.cgid = 7;
    d.shm_perm.__seq = 9;
    d.shm_segsz = 1;
    d.shm_nattch = 99;
    d.shm_cpid = 1;
    d.shm_lpid = 1;
    d.shm_atime = 12345;
    T("S87", shmctl(id, IPC_SET, &d));
    stat_print("S87", "after IPC_SET", id);
    MUST(shmctl(id, IPC_STAT, &d));
    out("S87 ctime advanced = %s", d.shm_ctime > before.shm_ctime ? "yes" : "no");
    /* SHM_LOCKED survives a mode of 0 */
    set_mode("S87", id, 0, 0, 0);
    stat_short("S87", "mode 0 keeps SHM_LOCKED", id);
    T("S87", shmctl(id, SHM_UNLOCK, NULL));

    /* S89: unmapped ids → EINVAL */
    set_mode("S89", id, (uid_t)-1, 0, 0600);
    set_mode("S89", id, 0, (gid_t)-1, 0600);
    stat_short("S89", "unchanged", id);
    set_mode("S87", id, 65534, 65534, 0644);
    stat_print("S87", "given away", id);

    /* S88: root (CAP_SYS_ADMIN) can still IPC_SET a segment it does not own */
    set_mode("S88 root", id, 0, 0, 0600);

    /* S90: buf is read before the lookup */
    T("S90", shmctl(id, IPC_SET, NULL));
    T("S90", shmctl(id, IPC_SET, (struct shmid_ds *)unmapped_addr()));
    T("S90", shmctl(id + 32768, IPC_SET, NULL));
    T("S90", shmctl(4000, IPC_SET, (struct shmid_ds *)unmapped_addr()));
    T("S90", shmctl(-1, IPC_SET, NULL));
    memset(&d, 0, sizeof d);
    d.shm_perm.mode = 0600;
    T("S90", shmctl(4000, IPC_SET, &d));
    /* a read-only buffer is fine for IPC_SET */
    char *ro = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    MUST(shmctl(id, IPC_STAT, (struct shmid_ds *)ro));
    ((struct shmid_ds *)ro)->shm_perm.mode = 0660;
    mprotect(ro, PAGE, PROT_READ);
    T("S90", shmctl(id, IPC_SET, (struct shmid_ds *)ro));
    munmap(ro, PAGE);
    stat_short("S90", "from read-only buf", id);

    /* S88 S116: unprivileged creators and non-owners */
    in_child("child1", child_creator, NULL);
    stat_print("S88", "created by 1001, given to 1002", g_id);
    in_child("child2", child_other, NULL);
    in_child("child3", child_new_owner, NULL);
    stat_short("S88", "after new owner", g_id);

    T("cleanup", shmctl(g_id, IPC_RMID, NULL));
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
