/* _persist — helper for persist.sh (not a test by itself: names starting
 * with "_" are only compiled).  S127 S85 S120 S122 S18 S31 S93
 *
 *   _persist create           create keyed + private segments, write, exit
 *   _persist find ID PID      look up by key and by id, check the pattern
 *   _persist attach-exit ID   attach and exit without shmdt
 *   _persist hold ID          attach, print "held", sleep until killed
 *   _persist stat ID          print nattch/lpid/dtime
 *   _persist remove ID ID2    IPC_RMID both, check they are gone
 */
#include "common.h"

#define KEY 0x5EED0B01

static void show(const char *s, int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        out("%s IPC_STAT(%d) = -1 %s", s, id, errname(errno));
        return;
    }
    out("%s id=%d key=%d mode=%04o segsz=%zu nattch=%lu cpid=%s lpid=%s atime=%s dtime=%s", s,
        id, d.shm_perm.__key, d.shm_perm.mode, d.shm_segsz, (unsigned long)d.shm_nattch,
        pidname(d.shm_cpid), pidname(d.shm_lpid), tname(d.shm_atime), tname(d.shm_dtime));
}

static int check_pattern(const unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 7 + seed)) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage\n"); return 2; }
    const char *cmd = argv[1];
    if (strcmp(cmd, "create") == 0) {
        int id = T("S127 create", shmget(KEY, 10000, IPC_CREAT | IPC_EXCL | 0640));
        int pid2 = T("S127 create", shmget(IPC_PRIVATE, 5000, 0600));
        unsigned char *p = A("S127 create", shmat(id, NULL, 0), NULL);
        unsigned char *q = A("S127 create", shmat(pid2, NULL, 0), NULL);
        if (p == FAILED || q == FAILED) return 1;
        for (size_t i = 0; i < 10000; i++) p[i] = (unsigned char)(i * 7 + 1);
        for (size_t i = 0; i < 5000; i++) q[i] = (unsigned char)(i * 7 + 2);
        T("S127 create", shmdt(p));
        /* q stays attached: exit detaches it */
        show("S127 create", id);
        return 0;
    }
    if (strcmp(cmd, "find") == 0 && argc == 4) {
        int id = atoi(argv[2]), id2 = atoi(argv[3]);
        int k = T("S127 find", shmget(KEY, 0, 0));
        out("S127 find by key matches = %s", k == id ? "yes" : "no");
        T("S127 find", shmget(KEY, 10000, 0640));
        T("S127 find", shmget(KEY, 10001, 0));
        T("S127 find", shmget(KEY, 1, IPC_CREAT | IPC_EXCL | 0600));
        show("S127 S85 find", id);
        show("S127 S85 S120 find", id2);
        unsigned char *p = A("S127 find", shmat(id, NULL, SHM_RDONLY), NULL);
        unsigned char *q = A("S127 find", shmat(id2, NULL, 0), NULL);
        if (p != FAILED) out("S127 pattern keyed = %s", check_pattern(p, 10000, 1) ? "ok" : "BAD");
        if (q != FAILED) out("S127 pattern private = %s", check_pattern(q, 5000, 2) ? "ok" : "BAD");
        if (q != FAILED) q[0] = 0xEE;
        if (p != FAILED) T("S127 find", shmdt(p));
        if (q != FAILED) T("S127 find", shmdt(q));
        return 0;
    }
    if (strcmp(cmd, "attach-exit") == 0 && argc == 3) {
        int id = atoi(argv[2]);
        unsigned char *p = A("S120 attach-exit", shmat(id, NULL, 0), NULL);
        if (p != FAILED) out("S120 attach-exit sees previous write = %s", p[0] == 0xEE ? "yes" : "no");
        show("S120 attach-exit", id);
        return 0;
    }
    if (strcmp(cmd, "hold") == 0 && argc == 3) {
        int id = atoi(argv[2]);
        void *p = A("S122 hold", shmat(id, NULL, 0), NULL);
        void *p2 = A("S122 hold", shmat(id, NULL, SHM_RDONLY), NULL);
        (void)p;
        (void)p2;
        show("S122 hold", id);
        out("held");
        for (;;) pause();
    }
    if (strcmp(cmd, "stat") == 0 && argc == 4) {
        show(argv[3], atoi(argv[2]));
        return 0;
    }
    if (strcmp(cmd, "remove") == 0 && argc == 4) {
        int id = atoi(argv[2]), id2 = atoi(argv[3]);
        T("S127 remove", shmctl(id, IPC_RMID, NULL));
        T("S127 remove", shmctl(id2, IPC_RMID, NULL));
        T("S127 remove", shmget(KEY, 0, 0));
        T("S127 remove", shmctl(id, IPC_STAT, &(struct shmid_ds){0}));
        info_print("S127 remove", "empty");
        return 0;
    }
    fprintf(stderr, "bad command\n");
    return 2;
}
