/* trap_raw — S155
 * shim-env: SHMSHIM_TRAP=1
 * System calls made with the syscall instruction itself, past libc: shmget,
 * shmat, shmdt and shmctl with their kernel-style results (-errno), errno left
 * alone, across fork and exec; the program's own SIGSYS handler is reported and
 * still runs for a SIGSYS it raises.
 */
#include "common.h"

static long raw6(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static const char *kres(long r)
{
    static char b[4][48];
    static int k;
    char *s = b[k++ & 3];
    if (r < 0 && r > -4096)
        snprintf(s, 48, "-%s", errname((int)-r));
    else
        snprintf(s, 48, "%s", r == 0 ? "0" : "positive");
    return s;
}

static volatile sig_atomic_t got_sys;
static void on_sys(int sig)
{
    (void)sig;
    got_sys++;
}

static void exercise(const char *who)
{
    errno = 1234;
    long id = raw6(SYS_shmget, 0x7e57a001, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    out("%s raw shmget(IPC_CREAT|IPC_EXCL) = %s", who, id == 0 ? "id 0" : kres(id));
    out("%s errno after a raw call: %d", who, errno);
    out("%s raw shmget again = %s", who, kres(raw6(SYS_shmget, 0x7e57a001, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0600)));
    out("%s libc finds it: %s", who, shmget(0x7e57a001, 0, 0) == id ? "same id" : "no");
    long p = raw6(SYS_shmat, id, 0, 0);
    out("%s raw shmat = %s", who, p > 0 && p % PAGE == 0 ? "page-aligned" : kres(p));
    if (p > 0) strcpy((char *)p, "raw");
    char *q = shmat((int)id, NULL, SHM_RDONLY);
    out("%s libc attach reads: %s", who, q == FAILED ? "fail" : q);
    struct shmid_ds d;
    memset(&d, 0, sizeof d);
    long r = raw6(SYS_shmctl, id, IPC_STAT, (long)&d);
    out("%s raw IPC_STAT = %s nattch=%lu segsz=%zu", who, kres(r), (unsigned long)d.shm_nattch, d.shm_segsz);
    out("%s raw IPC_STAT of -1 = %s", who, kres(raw6(SYS_shmctl, -1, IPC_STAT, (long)&d)));
    out("%s raw IPC_STAT to a bad buffer = %s", who, kres(raw6(SYS_shmctl, id, IPC_STAT, 16)));
    out("%s raw shmdt = %s", who, kres(raw6(SYS_shmdt, p, 0, 0)));
    out("%s raw shmdt again = %s", who, kres(raw6(SYS_shmdt, p, 0, 0)));
    shmdt(q);
    out("%s raw IPC_RMID = %s", who, kres(raw6(SYS_shmctl, id, IPC_RMID, 0)));
    int g = shmget(0x7e57a001, 0, 0);
    out("%s libc after it: %d %s", who, g, errname(errno));
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "exec") == 0) {
        exercise("exec'd");
        return 0;
    }
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sys;
    out("sigaction(SIGSYS) = %d", sigaction(SIGSYS, &sa, NULL));
    exercise("parent");
    memset(&old, 0, sizeof old);
    sigaction(SIGSYS, NULL, &old);
    out("SIGSYS handler reported: %s", old.sa_handler == on_sys ? "the program's" : "another");
    raise(SIGSYS);
    out("program's SIGSYS handler ran: %d", (int)got_sys);

    pid_t c = fork();
    if (c == 0) {
        exercise("child");
        _exit(0);
    }
    reap(c, "child");
    c = fork();
    if (c == 0) {
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) _exit(1);
        exe[n] = 0;
        execl(exe, exe, "exec", (char *)NULL);
        _exit(127);
    }
    reap(c, "exec'd child");
    return 0;
}
