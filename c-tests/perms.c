/* perms — S112 S113 S114 S115 S116 S117 S35 S36 S44 S54 S65 S67 S82 S88 S92 S104
 * The permission model, from forked children that drop to other uids/gids
 * (which clears every capability): class choice (owner by uid or cuid, group
 * by fsgid/supplementary groups against gid or cgid, else other; only that
 * class's bits count), what each operation needs (read, read+write, +exec),
 * ownership rights for IPC_RMID, shmget lookup permission (OR of the three
 * triplets), error precedence (EEXIST, EINVAL size, then EACCES; shmat
 * alignment EINVAL before EACCES before overlap), and uid/gid from the
 * effective ids.  Root's bypass (CAP_IPC_OWNER) is shown for contrast.
 */
#include "common.h"

#define KROOT 0x5EED0801 /* root's 0600 segment */
#define KCLS 0x5EED0802  /* uid 1001, gid 2001, mode 0640 */

struct seg {
    const char *name;
    int id;
};
static struct seg segs[16];
static int nsegs;

static int mk(const char *name, key_t key, size_t size, mode_t mode, uid_t uid, gid_t gid)
{
    int id = shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
    if (id == -1) {
        out("FATAL mk %s %s", name, errname(errno));
        exit(99);
    }
    struct shmid_ds d;
    MUST(shmctl(id, IPC_STAT, &d));
    d.shm_perm.uid = uid;
    d.shm_perm.gid = gid;
    d.shm_perm.mode = mode;
    MUST(shmctl(id, IPC_SET, &d));
    segs[nsegs].name = name;
    segs[nsegs].id = id;
    nsegs++;
    return id;
}

static int seg(const char *name)
{
    for (int i = 0; i < nsegs; i++)
        if (strcmp(segs[i].name, name) == 0) return segs[i].id;
    out("FATAL no seg %s", name);
    exit(99);
}

static const char *at_try(int id, int flg)
{
    static char buf[4][32];
    static int k;
    char *b = buf[k++ & 3];
    errno = 0;
    void *p = shmat(id, NULL, flg);
    if (p == FAILED) {
        snprintf(b, 32, "%s", errname(errno));
    } else {
        snprintf(b, 32, "ok");
        shmdt(p);
    }
    return b;
}

static const char *ctl_try(int id, int cmd)
{
    static char buf[4][32];
    static int k;
    char *b = buf[k++ & 3];
    struct shmid_ds d;
    errno = 0;
    int r = shmctl(id, cmd, &d);
    snprintf(b, 32, "%s", r == -1 ? errname(errno) : "ok");
    return b;
}

/* One line: what this caller may do with the segment. */
static void access_line(const char *who, const char *name)
{
    int id = seg(name);
    out("S114 %s on %s: shmat rw=%s ro=%s rwx=%s rx=%s IPC_STAT=%s SHM_STAT=%s SHM_STAT_ANY=%s",
        who, name, at_try(id, 0), at_try(id, SHM_RDONLY), at_try(id, SHM_EXEC),
        at_try(id, SHM_EXEC | SHM_RDONLY), ctl_try(id, IPC_STAT),
        ctl_try(id & 32767, SHM_STAT), ctl_try(id & 32767, SHM_STAT_ANY));
}

static void lookup(const char *s, key_t key, size_t size, int flg)
{
    char lbl[80];
    snprintf(lbl, sizeof lbl, "shmget(0x%x, %zu, 0%o)", (unsigned)key, size, flg);
    TL(s, lbl, shmget(key, size, flg));
}

struct who {
    const char *name;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[2];
};

static const struct who WHO_OWNER = {"uid1001", 1001, 2001, 0, {0}};
static const struct who WHO_GROUP = {"uid1002/gid2001", 1002, 2001, 0, {0}};
static const struct who WHO_SUPP = {"uid1002/gid3000+2001", 1002, 3000, 1, {2001}};
static const struct who WHO_OTHER = {"uid1002/gid3000", 1002, 3000, 0, {0}};
static const struct who WHO_NOBODY = {"nobody", 65534, 65534, 0, {0}};

static void child_access(void *arg)
{
    const struct who *w = arg;
    become(w->uid, w->gid, w->ngroups, w->groups);
    access_line(w->name, "cls0640");
    access_line(w->name, "cls0750");
    access_line(w->name, "own0066");
    access_line(w->name, "own0600");
    access_line(w->name, "own0700");
    access_line(w->name, "own0500");
    access_line(w->name, "own0200");
    access_line(w->name, "own0400");
    access_line(w->name, "grp0060");
    access_line(w->name, "oth0006");
    access_line(w->name, "cuid0600");
    access_line(w->name, "cgid0060");
    access_line(w->name, "root0600");
}

/* S117 S35 S36 S44: lookups */
static void child_lookup(void *arg)
{
    const struct who *w = arg;
    become(w->uid, w->gid, w->ngroups, w->groups);
    char s[64];
    snprintf(s, sizeof s, "S117 %s", w->name);
    /* KCLS: uid 1001 gid 2001 mode 0640 */
    lookup(s, KCLS, 0, 0);
    lookup(s, KCLS, 0, 0400);
    lookup(s, KCLS, 0, 0600);
    lookup(s, KCLS, 0, 0040);
    lookup(s, KCLS, 0, 0060);
    lookup(s, KCLS, 0, 0004);
    lookup(s, KCLS, 0, 0066);
    lookup(s, KCLS, 0, 0700);
    lookup(s, KCLS, 0, 0001);
    lookup(s, KCLS, 0, 0100);
    lookup(s, KCLS, 0, IPC_CREAT | 0640);
    /* S35 S44: precedence on root's 0600 segment of 100 bytes */
    snprintf(s, sizeof s, "S35 S44 %s", w->name);
    lookup(s, KROOT, 0, 0);
    lookup(s, KROOT, 100, 0);
    lookup(s, KROOT, 101, 0600);
    lookup(s, KROOT, 100, 0600);
    lookup(s, KROOT, 100, 0400);
    lookup(s, KROOT, 101, IPC_CREAT | IPC_EXCL | 0600);
    lookup(s, KROOT, 100, IPC_CREAT | 0600);
}

/* S65: shmat error order for a caller without permission */
static void child_order(void *arg)
{
    (void)arg;
    become(1002, 3000, 0, NULL);
    int id = seg("root0600");
    char *reg = free_region(2);
    char *busy = mmap(reg, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (busy == MAP_FAILED) { out("FATAL mmap"); exit(99); }
    A("S65 other", shmat(id, reg + 1, 0), NULL);
    A("S65 other", shmat(id, reg, 0), NULL);
    A("S65 other", shmat(id, reg + PAGE, 0), NULL);
    A("S65 other", shmat(id, NULL, SHM_REMAP), NULL);
    A("S65 other", shmat(id, (void *)0x800000000000UL, 0), NULL);
    A("S65 other", shmat(id + 32768, reg, 0), NULL);
}

/* S92 S115: ownership for IPC_RMID (and IPC_SET) */
static void child_rmid_stranger(void *arg)
{
    (void)arg;
    become(1002, 2001, 1, (gid_t[]){0});
    T("S92 S115 group member", shmctl(seg("cls0640"), IPC_RMID, NULL));
    T("S92 S115 group member", shmctl(seg("oth0006"), IPC_RMID, NULL));
    struct shmid_ds d;
    memset(&d, 0, sizeof d);
    d.shm_perm.mode = 0666;
    T("S115 group member", shmctl(seg("cls0640"), IPC_SET, &d));
    stat_short("S92", "cls0640 still there (as group member)", seg("cls0640"));
}

static void child_rmid_owner(void *arg)
{
    (void)arg;
    become(1001, 2001, 0, NULL);
    /* mode 0000 owned by 1001: the mode does not matter */
    T("S92 owner of mode 0000", shmctl(seg("own0000"), IPC_RMID, NULL));
    /* cuid 1001 (given away to 1005): creator may remove */
    T("S92 creator", shmctl(seg("cuid0600"), IPC_RMID, NULL));
}

/* S116: ids come from the effective ids */
static void child_effective(void *arg)
{
    (void)arg;
    if (setgroups(0, NULL) || setresgid(2002, 2001, 2002) || setresuid(1002, 1001, 1002)) {
        out("FATAL setres %s", errname(errno));
        exit(98);
    }
    int id = T("S116 ruid1002/euid1001", shmget(0x5EED0810, 10, IPC_CREAT | 0644));
    (void)id;
}

/* helper to create a segment as another user (cuid/cgid) */
static void child_create_as(void *arg)
{
    const struct who *w = arg;
    become(w->uid, w->gid, 0, NULL);
    int id = shmget(0x5EED0820 + (int)w->uid, 10, IPC_CREAT | IPC_EXCL | 0600);
    if (id == -1) out("FATAL create as %s: %s", w->name, errname(errno));
}

int main(void)
{
    mk("root0600", KROOT, 100, 0600, 0, 0);
    mk("cls0640", KCLS, 100, 0640, 1001, 2001);
    mk("cls0750", IPC_PRIVATE, 100, 0750, 1001, 2001);
    mk("own0066", IPC_PRIVATE, 100, 0066, 1001, 2001);
    mk("own0600", IPC_PRIVATE, 100, 0600, 1001, 2001);
    mk("own0700", IPC_PRIVATE, 100, 0700, 1001, 2001);
    mk("own0500", IPC_PRIVATE, 100, 0500, 1001, 2001);
    mk("own0200", IPC_PRIVATE, 100, 0200, 1001, 2001);
    mk("own0400", IPC_PRIVATE, 100, 0400, 1001, 2001);
    mk("grp0060", IPC_PRIVATE, 100, 0060, 0, 2001);
    mk("oth0006", IPC_PRIVATE, 100, 0006, 0, 0);
    mk("own0000", IPC_PRIVATE, 100, 0000, 1001, 2001);

    /* cuid 1001 (created by 1001, uid moved to 1005); cgid 2001 (created
     * with egid 2001, gid moved to 2005) */
    static const struct who c1001 = {"creator1001", 1001, 2001, 0, {0}};
    in_child("child-c1", child_create_as, (void *)&c1001);
    int cu = T("setup", shmget(0x5EED0820 + 1001, 0, 0));
    struct shmid_ds d;
    MUST(shmctl(cu, IPC_STAT, &d));
    d.shm_perm.uid = 1005;
    d.shm_perm.gid = 2005;
    MUST(shmctl(cu, IPC_SET, &d));
    segs[nsegs].name = "cuid0600";
    segs[nsegs++].id = cu;
    static const struct who c1003 = {"creator1003", 1003, 2001, 0, {0}};
    in_child("child-c2", child_create_as, (void *)&c1003);
    int cg = T("setup", shmget(0x5EED0820 + 1003, 0, 0));
    MUST(shmctl(cg, IPC_STAT, &d));
    d.shm_perm.uid = 1005;
    d.shm_perm.gid = 2005;
    d.shm_perm.mode = 0060;
    MUST(shmctl(cg, IPC_SET, &d));
    segs[nsegs].name = "cgid0060";
    segs[nsegs++].id = cg;
    for (int i = 0; i < nsegs; i++)
        stat_short("setup", segs[i].name, segs[i].id);

    /* S112 S113 S114 S54 S67 S82 S104 */
    access_line("root", "root0600");
    access_line("root", "own0000");
    in_child("child-owner", child_access, (void *)&WHO_OWNER);
    in_child("child-group", child_access, (void *)&WHO_GROUP);
    in_child("child-supp", child_access, (void *)&WHO_SUPP);
    in_child("child-other", child_access, (void *)&WHO_OTHER);
    in_child("child-nobody", child_access, (void *)&WHO_NOBODY);

    /* S117 S35 S36 S44 */
    static const struct who rootw = {"root", 0, 0, 0, {0}};
    child_lookup((void *)&rootw); /* as root, in this process (no become) */
    in_child("child-owner", child_lookup, (void *)&WHO_OWNER);
    in_child("child-group", child_lookup, (void *)&WHO_GROUP);
    in_child("child-other", child_lookup, (void *)&WHO_OTHER);

    /* S65 */
    in_child("child-order", child_order, NULL);

    /* S92 S115 */
    in_child("child-stranger", child_rmid_stranger, NULL);
    in_child("child-rmowner", child_rmid_owner, NULL);
    T("S92", shmctl(seg("own0000"), IPC_STAT, &d));
    T("S92", shmctl(seg("cuid0600"), IPC_STAT, &d));

    /* S116 */
    in_child("child-eff", child_effective, NULL);
    int e = T("S116", shmget(0x5EED0810, 0, 0));
    stat_print("S116", "created with ruid 1002 euid 1001", e);
    T("cleanup", shmctl(e, IPC_RMID, NULL));

    for (int i = 0; i < nsegs; i++) {
        if (strcmp(segs[i].name, "own0000") == 0 || strcmp(segs[i].name, "cuid0600") == 0)
            continue;
        rmid(segs[i].id);
    }
    info_print("cleanup", "end");
    return 0;
}
