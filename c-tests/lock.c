/* lock — S106 S107 S108 S109 S111 S115 S101
 * SHM_LOCK / SHM_UNLOCK: root locks (twice is fine), unlocks (an unlocked
 * segment too), buf ignored, ctime unchanged, no pages faulted in; without
 * CAP_IPC_LOCK only uid/cuid may lock (EPERM), RLIMIT_MEMLOCK 0 → EPERM,
 * pages over the limit (counted per user across segments) → ENOMEM, unlock
 * never checks the limit; the lock outlives the locking process and another
 * process of that uid can unlock.
 */
#include "common.h"

#define ID(i) (shared_ints()[i])

static void show(const char *s, const char *label, int id)
{
    stat_short(s, label, id);
}

static void set_memlock(rlim_t soft)
{
    struct rlimit rl;
    getrlimit(RLIMIT_MEMLOCK, &rl);
    rl.rlim_cur = soft;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < soft) rl.rlim_max = soft;
    if (setrlimit(RLIMIT_MEMLOCK, &rl) == -1) {
        out("FATAL setrlimit %s", errname(errno));
        exit(96);
    }
}

/* uid 1003: not the owner */
static void child_stranger(void *arg)
{
    (void)arg;
    become(1003, 2003, 0, NULL);
    T("S107 uid1003", shmctl(ID(0), SHM_LOCK, NULL));
    T("S107 uid1003", shmctl(ID(0), SHM_UNLOCK, NULL));
    T("S107 uid1003", shmctl(ID(1), SHM_LOCK, NULL));
    T("S111 uid1003", shmctl(ID(0) + 32768, SHM_LOCK, NULL));
}

/* uid 1001: owner of ID(1) (uid) and ID(2) (cuid via a child-created seg) */
static void child_owner_limits(void *arg)
{
    (void)arg;
    set_memlock(0);
    become(1001, 2001, 0, NULL);
    /* S108: RLIMIT_MEMLOCK 0 → EPERM for lock, unlock is fine */
    T("S108 limit0", shmctl(ID(1), SHM_LOCK, NULL));
    T("S108 limit0", shmctl(ID(1), SHM_UNLOCK, NULL));
    /* limit of 3 pages: ID(1) is 2 pages, ID(3) is 2 pages */
    set_memlock(3 * PAGE);
    T("S108 limit3p", shmctl(ID(1), SHM_LOCK, NULL));
    T("S108 limit3p twice", shmctl(ID(1), SHM_LOCK, NULL));
    T("S108 limit3p second seg", shmctl(ID(3), SHM_LOCK, NULL));
    T("S108 limit3p", shmctl(ID(1), SHM_UNLOCK, NULL));
    T("S108 limit3p second seg", shmctl(ID(3), SHM_LOCK, NULL));
    /* unlock does not check the limit */
    set_memlock(0);
    T("S108 limit0 unlock", shmctl(ID(3), SHM_UNLOCK, NULL));
    /* a segment bigger than the limit */
    set_memlock(PAGE);
    T("S108 limit1p", shmctl(ID(1), SHM_LOCK, NULL));
    /* S109: leave ID(3) locked and exit */
    set_memlock(8 * PAGE);
    T("S109 uid1001 lock and exit", shmctl(ID(3), SHM_LOCK, NULL));
}

static void child_unlocker(void *arg)
{
    (void)arg;
    become(1001, 2001, 0, NULL);
    T("S109 another uid1001 process", shmctl(ID(3), SHM_UNLOCK, NULL));
}

static void child_root_lock(void *arg)
{
    (void)arg;
    T("S109 root child", shmctl(ID(0), SHM_LOCK, NULL));
}

int main(void)
{
    shared_ints();
    int a = T("setup", shmget(IPC_PRIVATE, 3 * PAGE, 0600));
    ID(0) = a;
    struct shmid_ds before, d;
    MUST(shmctl(a, IPC_STAT, &before));
    next_second();

    /* S106 */
    T("S106", shmctl(a, SHM_LOCK, NULL));
    show("S106", "locked", a);
    T("S106", shmctl(a, SHM_LOCK, (struct shmid_ds *)unmapped_addr()));
    show("S106", "locked twice", a);
    info_print("S106", "no pages faulted");
    struct shm_info si;
    MUST(shmctl(0, SHM_INFO, (struct shmid_ds *)&si));
    out("S106 shm_rss after lock = %lu", si.shm_rss);
    MUST(shmctl(a, IPC_STAT, &d));
    out("S106 ctime unchanged = %s", d.shm_ctime == before.shm_ctime ? "yes" : "no");
    T("S106", shmctl(a, SHM_UNLOCK, (struct shmid_ds *)1));
    show("S106", "unlocked", a);
    T("S106", shmctl(a, SHM_UNLOCK, NULL));
    show("S106", "unlocked twice", a);
    MUST(shmctl(a, IPC_STAT, &d));
    out("S106 ctime unchanged = %s", d.shm_ctime == before.shm_ctime ? "yes" : "no");

    /* S111: invalid ids */
    T("S111", shmctl(a + 32768, SHM_LOCK, NULL));
    T("S111", shmctl(a + 32768, SHM_UNLOCK, NULL));
    T("S111", shmctl(-1, SHM_LOCK, NULL));
    T("S111", shmctl(1000, SHM_UNLOCK, NULL));

    /* ID(1): owned by uid 1001 through IPC_SET (cuid stays 0), 2 pages */
    int b = T("setup", shmget(IPC_PRIVATE, PAGE + 1, 0600));
    ID(1) = b;
    MUST(shmctl(b, IPC_STAT, &d));
    d.shm_perm.uid = 1001;
    d.shm_perm.gid = 2001;
    d.shm_perm.mode = 0;
    T("setup", shmctl(b, IPC_SET, &d));
    /* ID(3): created by root, owned by 1001, 2 pages */
    int c = T("setup", shmget(IPC_PRIVATE, 2 * PAGE, 0600));
    ID(3) = c;
    MUST(shmctl(c, IPC_STAT, &d));
    d.shm_perm.uid = 1001;
    T("setup", shmctl(c, IPC_SET, &d));

    /* S107 */
    in_child("child1", child_stranger, NULL);
    show("S107", "a after stranger", a);

    /* S108 S109 */
    in_child("child2", child_owner_limits, NULL);
    show("S108", "b", b);
    show("S109", "c locked by exited child", c);
    in_child("child3", child_unlocker, NULL);
    show("S109", "c unlocked by another process", c);
    in_child("child4", child_root_lock, NULL);
    show("S109", "a locked by exited root child", a);
    T("S109", shmctl(a, SHM_UNLOCK, NULL));

    /* a locked segment is removed normally */
    T("S106", shmctl(b, SHM_LOCK, NULL));
    T("cleanup", shmctl(a, IPC_RMID, NULL));
    T("cleanup", shmctl(b, IPC_RMID, NULL));
    T("cleanup", shmctl(c, IPC_RMID, NULL));
    return 0;
}
