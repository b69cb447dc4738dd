/* release — S75 S120 S123 S46
 * A removed segment whose last attacher exits (without shmdt), execs or is
 * killed is gone, memory included, by the time waitpid returns: the id is
 * invalid for the waiter and for a program it starts next, the segment's
 * pages are no longer counted in /proc/meminfo (Shmem), and huge pages are
 * free again for the next SHM_HUGETLB segment (when this machine can reserve
 * huge pages: the test reserves two for itself and gives them back).
 */
#include "common.h"

#define BIG (32UL << 20)
#define HUGE (2UL << 20)

static char exe[4096];

static long meminfo_kb(const char *field)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* exec'd helper: argv = [exe, "stat", id] or [exe, "huge"] — a program
 * started after the waiter's waitpid. */
static int helper(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "stat") == 0) {
        struct shmid_ds d;
        errno = 0;
        int r = shmctl(atoi(argv[2]), IPC_STAT, &d);
        out("next program: IPC_STAT = %d %s", r, r == -1 ? errname(errno) : "");
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "huge") == 0) {
        errno = 0;
        int id = shmget(IPC_PRIVATE, 2 * HUGE, SHM_HUGETLB | 0600);
        out("next program: shmget(2 huge pages) = %s", id == -1 ? errname(errno) : "ok");
        if (id != -1) shmctl(id, IPC_RMID, NULL);
        return 0;
    }
    return 2;
}

static void run_next(const char *a, const char *b)
{
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        execl(exe, exe, a, b, (char *)NULL);
        _exit(127);
    }
    reap(p, "next");
}

/* How the last attacher goes: 0 exit without shmdt, 1 SIGKILL, 2 execve. */
static void last_attacher_goes(const char *label, int how, size_t size, int flags)
{
    long before = meminfo_kb("Shmem");
    int id = shmget(IPC_PRIVATE, size, flags | 0600);
    if (id == -1) {
        out("%s shmget = -1 %s", label, errname(errno));
        return;
    }
    struct sync2 s;
    sync_init(&s);
    pid_t c = fork();
    if (c == 0) {
        char *p = shmat(id, NULL, 0);
        if (p == FAILED) _exit(3);
        memset(p, 0x5a, size);
        sync_send(s.c2p[1]);
        sync_wait(s.p2c[0]);
        if (how == 2) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(4);
        }
        if (how == 1) pause();
        _exit(0);
    }
    name_pid(c, "attacher");
    sync_wait(s.c2p[0]);
    long touched = meminfo_kb("Shmem");
    struct shmid_ds d;
    shmctl(id, IPC_STAT, &d);
    out("%s attached: nattch=%lu", label, (unsigned long)d.shm_nattch);
    T(label, shmctl(id, IPC_RMID, NULL));
    if (how == 1) kill(c, SIGKILL);
    sync_send(s.p2c[1]);
    int st;
    waitpid(c, &st, 0);
    long after = meminfo_kb("Shmem");
    errno = 0;
    int r = shmctl(id, IPC_STAT, &d);
    out("%s after waitpid: IPC_STAT = %d %s", label, r, r == -1 ? errname(errno) : "");
    if (!(flags & SHM_HUGETLB)) {
        long mb = (long)(size >> 20);
        out("%s pages counted while attached: %s", label, touched - before >= mb * 1024 * 7 / 8 ? "yes" : "no");
        out("%s pages released by waitpid: %s", label, touched - after >= mb * 1024 * 7 / 8 ? "yes" : "no");
    }
    char ids[16];
    snprintf(ids, sizeof ids, "%d", id);
    run_next("stat", ids);
    close(s.c2p[0]), close(s.c2p[1]), close(s.p2c[0]), close(s.p2c[1]);
}

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

static int write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int r = fprintf(f, "%ld\n", v) > 0 ? 0 : -1;
    if (fclose(f) != 0) r = -1;
    return r;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "stat") == 0 || strcmp(argv[1], "huge") == 0)) return helper(argc, argv);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { out("FATAL readlink"); return 1; }
    exe[n] = 0;

    last_attacher_goes("S120 exit", 0, BIG, 0);
    last_attacher_goes("S122 SIGKILL", 1, BIG, 0);
    last_attacher_goes("S121 execve", 2, BIG, 0);

    /* Huge pages: reserve two more, take them, give them back. */
    const char *nr = "/proc/sys/vm/nr_hugepages";
    long old = read_long(nr);
    long free0 = meminfo_kb("HugePages_Free");
    int reserved = old >= 0 && free0 >= 0 && write_long(nr, old + 2) == 0 && meminfo_kb("HugePages_Free") >= free0 + 2;
    if (!reserved) {
        out("S46 huge pages: none can be reserved here");
    } else {
        long free1 = meminfo_kb("HugePages_Free");
        last_attacher_goes("S46 hugetlb exit", 0, 2 * HUGE, SHM_HUGETLB);
        out("S46 huge pages free after waitpid: %s", meminfo_kb("HugePages_Free") == free1 && meminfo_kb("HugePages_Rsvd") == 0 ? "all" : "not all");
        run_next("huge", NULL);
        last_attacher_goes("S46 hugetlb SIGKILL", 1, 2 * HUGE, SHM_HUGETLB);
        out("S46 huge pages free after waitpid: %s", meminfo_kb("HugePages_Free") == free1 && meminfo_kb("HugePages_Rsvd") == 0 ? "all" : "not all");
        run_next("huge", NULL);
    }
    if (old >= 0 && write_long(nr, old) != 0) out("FATAL restoring %s", nr);
    return 0;
}
