/* sysctl — S19 S128 S129 S130 S131 S132 S133 S134 S135
 * /proc/sys/kernel/shm{max,all,mni,_rmid_forced,_next_id}: reads show the
 * namespace's values; writes by root take effect from the next call (limits),
 * the next create (shm_next_id, which then reads -1 again), or at once
 * (shm_rmid_forced=1 removes orphans; later last detaches and creator exits
 * remove segments); bad values get EINVAL from write(2) (or fclose); others
 * cannot open them for writing.
 */
#include "common.h"

static const char *K = "/proc/sys/kernel/";

static const char *rd(const char *name)
{
    static char b[4][64];
    static int k;
    char *s = b[k++ & 3], path[128];
    snprintf(path, sizeof path, "%s%s", K, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(s, 64, "open: %s", errname(errno));
        return s;
    }
    ssize_t n = read(fd, s, 63);
    close(fd);
    s[n > 0 ? n : 0] = 0;
    if (n > 0 && s[n - 1] == '\n') s[n - 1] = 0;
    if (s[0] != '-' && strtoull(s, NULL, 10) > (1ULL << 40)) return "big";
    return s;
}

/* open + write + close: "ok" or the errno of the step that failed */
static const char *wr(const char *name, const char *val)
{
    static char b[4][64];
    static int k;
    char *s = b[k++ & 3], path[128];
    snprintf(path, sizeof path, "%s%s", K, name);
    int fd = open(path, O_WRONLY);
    if (fd < 0) {
        snprintf(s, 64, "open %s", errname(errno));
        return s;
    }
    errno = 0;
    ssize_t n = write(fd, val, strlen(val));
    int e = errno;
    close(fd);
    if (n != (ssize_t)strlen(val)) {
        snprintf(s, 64, "write %zd %s", n, errname(e));
        return s;
    }
    return "ok";
}

static void show(const char *s)
{
    char a[64], b[64], c[64], d[64], e[64];
    snprintf(a, 64, "%s", rd("shmmax"));
    snprintf(b, 64, "%s", rd("shmall"));
    snprintf(c, 64, "%s", rd("shmmni"));
    snprintf(d, 64, "%s", rd("shm_rmid_forced"));
    snprintf(e, 64, "%s", rd("shm_next_id"));
    out("%s: shmmax=%s shmall=%s shmmni=%s rmid_forced=%s next_id=%s", s, a, b, c, d, e);
}

static const char *get(int key, size_t size, int flg)
{
    static char b[4][64];
    static int k;
    char *s = b[k++ & 3];
    errno = 0;
    int id = shmget(key, size, flg);
    if (id < 0)
        snprintf(s, 64, "-1 %s", errname(errno));
    else
        snprintf(s, 64, "id=%d", id);
    return s;
}

static int exists(int id)
{
    struct shmid_ds d;
    return shmctl(id, IPC_STAT, &d) == 0;
}

int main(void)
{
    show("S133 initially");

    /* shmmax */
    out("S135 shmmax=8192: %s", wr("shmmax", "8192\n"));
    out("S135 shmget 8193 bytes = %s", get(IPC_PRIVATE, 8193, 0600));
    const char *g = get(IPC_PRIVATE, 8192, 0600);
    out("S135 shmget 8192 bytes = %s", g[0] == 'i' ? "an id" : g);
    out("S134 shmmax=abc: %s", wr("shmmax", "abc"));
    out("S134 shmmax=-5: %s", wr("shmmax", "-5"));
    out("S134 shmmax=18446744073709551616: %s", wr("shmmax", "18446744073709551616"));
    const char *w = wr("shmmax", " 123 \n");
    out("S134 shmmax=' 123 ': %s -> %s", w, rd("shmmax"));
    w = wr("shmmax", "7");
    out("S134 shmmax='7' (no newline): %s -> %s", w, rd("shmmax"));
    w = wr("shmmax", "18446744073709551615");
    out("S134 shmmax=18446744073709551615: %s -> %s", w, rd("shmmax"));

    /* ids from shm_next_id */
    int first = shmget(IPC_PRIVATE, PAGE, 0600);
    w = wr("shm_next_id", "100");
    out("S19 shm_next_id=100: %s -> %s", w, rd("shm_next_id"));
    const char *r = get(IPC_PRIVATE, 0, 0600);
    out("S19 a failed create keeps it: %s -> %s", r, rd("shm_next_id"));
    r = get(IPC_PRIVATE, PAGE, 0600);
    out("S19 next create = %s; shm_next_id now %s", r, rd("shm_next_id"));
    out("S19 then the cycle goes on: %s", get(IPC_PRIVATE, PAGE, 0600));
    w = wr("shm_next_id", "98309");
    out("S19 shm_next_id=98309 (seq 3, index 5): %s -> %s", w, get(IPC_PRIVATE, PAGE, 0600));
    char v[32];
    snprintf(v, sizeof v, "%d", first);
    w = wr("shm_next_id", v);
    out("S19 shm_next_id=an index in use: %s -> %s", w, get(IPC_PRIVATE, PAGE, 0600));
    out("S19 shm_next_id=-1: %s", wr("shm_next_id", "-1"));

    /* shmmni */
    struct shm_info si;
    int used = shmctl(0, SHM_INFO, (struct shmid_ds *)&si) >= 0 ? si.used_ids : -1;
    snprintf(v, sizeof v, "%d", used + 1);
    out("S133 shmmni=used+1: %s", wr("shmmni", v));
    out("S133 one more create = %s", get(IPC_PRIVATE, PAGE, 0600)[0] == 'i' ? "an id" : "failed");
    out("S133 the next = %s", get(IPC_PRIVATE, PAGE, 0600));
    out("S134 shmmni=32769: %s", wr("shmmni", "32769"));
    out("S134 shmmni=32768: %s", wr("shmmni", "32768"));
    out("S134 shmmni=0: %s", wr("shmmni", "0"));
    out("S133 with shmmni=0: %s", get(IPC_PRIVATE, PAGE, 0600));
    out("S133 shmmni=4096: %s", wr("shmmni", "4096"));

    /* shmall */
    shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
    snprintf(v, sizeof v, "%lu", si.shm_tot + 1);
    out("S133 shmall=pages in use+1: %s", wr("shmall", v));
    out("S133 a 1-page create = %s", get(IPC_PRIVATE, PAGE, 0600)[0] == 'i' ? "an id" : "failed");
    out("S133 a 2-page create = %s", get(IPC_PRIVATE, 2 * PAGE, 0600));
    out("S133 shmall back: %s", wr("shmall", "18446744073692774399"));

    /* shm_rmid_forced */
    pid_t c = fork();
    if (c == 0) {
        shmget(0x5c7100a, PAGE, IPC_CREAT | 0600); /* created by a process that exits: an orphan */
        exit(0);
    }
    reap(c, "child");
    int orphan = shmget(0x5c7100a, 0, 0);
    int mine = shmget(0x5c7100b, PAGE, IPC_CREAT | 0600);
    void *p = shmat(mine, NULL, 0);
    shmdt(p);
    out("S130 rmid_forced=0: orphan exists %d, own (detached) exists %d", exists(orphan), exists(mine));
    out("S128 shm_rmid_forced=2: %s", wr("shm_rmid_forced", "2"));
    out("S132 shm_rmid_forced=1: %s", wr("shm_rmid_forced", "1"));
    out("S132 orphan exists %d, own exists %d", exists(orphan), exists(mine));
    p = shmat(mine, NULL, 0);
    out("S131 own attached: exists %d", exists(mine));
    shmdt(p);
    out("S131 after its last detach: exists %d", exists(mine));
    c = fork();
    if (c == 0) {
        shmget(0x5c7100c, PAGE, IPC_CREAT | 0600); /* never attached: goes with its creator */
        int a = shmget(0x5c7100d, PAGE, IPC_CREAT | 0600);
        shmat(a, NULL, 0); /* attached at exit: goes with the exit's detach */
        exit(0);
    }
    reap(c, "child");
    out("S130 a child's unattached segment after its exit: %s", get(0x5c7100c, 0, 0));
    out("S130 a child's attached segment after its exit: %s", get(0x5c7100d, 0, 0));
    int kept = shmget(0x5c7100e, PAGE, IPC_CREAT | 0600);
    out("S130 a new unattached segment of a live creator stays: exists %d", exists(kept));
    out("S128 shm_rmid_forced=0: %s", wr("shm_rmid_forced", "0"));
    shmctl(kept, IPC_RMID, NULL);

    /* stdio: fclose reports what write(2) would */
    FILE *f = fopen("/proc/sys/kernel/shmmni", "w");
    fprintf(f, "junk\n");
    errno = 0;
    int rc = fclose(f);
    out("S134 fprintf junk, fclose = %d %s", rc, errname(errno));
    f = fopen("/proc/sys/kernel/shmmni", "w");
    fprintf(f, "%d\n", 1000);
    rc = fclose(f);
    out("S134 fprintf 1000, fclose = %d -> %s", rc, rd("shmmni"));
    wr("shmmni", "4096");

    /* only root writes */
    c = fork();
    if (c == 0) {
        if (setgid(65534) || setuid(65534)) exit(3);
        out("S134 nobody: write shmmax: %s", wr("shmmax", "1"));
        out("S134 nobody: write shm_next_id: %s", wr("shm_next_id", "1"));
        out("S134 nobody: read shmmni: %s", rd("shmmni"));
        exit(0);
    }
    reap(c, "nobody");
    show("S133 finally");
    /* clean up what is left */
    struct shmid_ds d;
    int max = shmctl(0, IPC_INFO, &d);
    for (int i = 0; i <= max; i++) {
        int id = shmctl(i, SHM_STAT, &d);
        if (id >= 0) shmctl(id, IPC_RMID, NULL);
    }
    return 0;
}
