/* fork_exotic — S121 S124 S126 S118 S120
 * execve drops every attach while the process lives on; MADV_DONTFORK
 * attaches are not inherited; posix_spawn and vfork+exec children never
 * raise nattch, while _Fork() inherits and counts like fork.
 *
 * A raw SYS_fork syscall also inherits and counts on Linux (S126), but no
 * userspace hook runs for it, so shmshim cannot count it: README "Known
 * differences". This test checks what the shim does keep for such a child:
 * the inherited attach shares memory with the parent both ways (S119).
 */
#include "common.h"
#include <spawn.h>

extern char **environ;

static void show(const char *s, const char *label, int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        out("%s %s: IPC_STAT = -1 %s", s, label, errname(errno));
        return;
    }
    out("%s %s: nattch=%lu lpid=%s", s, label, (unsigned long)d.shm_nattch, pidname(d.shm_lpid));
}

/* exec'd helper mode: argv = [exe, "helper", wfd, rfd]: tell the parent we
 * are running, wait for its go, exit. */
static int helper(char **argv)
{
    int wfd = atoi(argv[2]), rfd = atoi(argv[3]);
    sync_send(wfd);
    sync_wait(rfd);
    return 0;
}

static char exe[4096];

static void fd_args(char *w, char *r, struct sync2 *s)
{
    sprintf(w, "%d", s->c2p[1]);
    sprintf(r, "%d", s->p2c[0]);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "helper") == 0) return helper(argv);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { out("FATAL readlink"); return 1; }
    exe[n] = 0;

    int id = T("setup", shmget(IPC_PRIVATE, 2 * PAGE, 0600));
    char *p = A("setup", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    show("setup", "one attach", id);

    struct sync2 s;
    char w[16], r[16];

    /* S121: execve drops the inherited attach while the process lives */
    sync_init(&s);
    fd_args(w, r, &s);
    pid_t c = fork();
    if (c == 0) {
        execl(exe, exe, "helper", w, r, (char *)NULL);
        _exit(127);
    }
    name_pid(c, "child-exec");
    sync_wait(s.c2p[0]); /* the exec'd image runs */
    show("S121", "child after execve", id);
    sync_send(s.p2c[1]);
    reap(c, "child-exec");
    show("S121", "child exited", id);

    /* S124: MADV_DONTFORK attaches are not inherited */
    char *q = A("S124", shmat(id, NULL, 0), NULL);
    T("S124", madvise(q, 2 * PAGE, MADV_DONTFORK));
    show("S124", "two attaches, one DONTFORK", id);
    sync_init(&s);
    c = fork();
    if (c == 0) {
        out("S124 child read q = %s", probe_read(q));
        out("S124 child read p = %s", probe_read(p));
        sync_send(s.c2p[1]);
        sync_wait(s.p2c[0]);
        exit(0);
    }
    name_pid(c, "child-dontfork");
    sync_wait(s.c2p[0]);
    show("S124", "child alive", id);
    sync_send(s.p2c[1]);
    reap(c, "child-dontfork");
    show("S124", "child exited", id);
    T("S124", shmdt(q));

    /* S126: posix_spawn */
    sync_init(&s);
    fd_args(w, r, &s);
    pid_t sp;
    char *sargv[] = {exe, "helper", w, r, NULL};
    int e = posix_spawn(&sp, exe, NULL, NULL, sargv, environ);
    out("S126 posix_spawn = %s", errname(e));
    if (e == 0) {
        name_pid(sp, "child-spawn");
        sync_wait(s.c2p[0]);
        show("S126", "posix_spawn child running", id);
        sync_send(s.p2c[1]);
        reap(sp, "child-spawn");
        show("S126", "posix_spawn child exited", id);
    }

    /* S126: vfork + exec */
    sync_init(&s);
    fd_args(w, r, &s);
    c = vfork();
    if (c == 0) {
        execl(exe, exe, "helper", w, r, (char *)NULL);
        _exit(127);
    }
    name_pid(c, "child-vfork");
    sync_wait(s.c2p[0]);
    show("S126", "vfork child running", id);
    sync_send(s.p2c[1]);
    reap(c, "child-vfork");
    show("S126", "vfork child exited", id);

    /* S126: _Fork (no atfork handlers) */
    sync_init(&s);
    fflush(stdout);
    c = _Fork();
    if (c == 0) {
        sync_send(s.c2p[1]);
        sync_wait(s.p2c[0]);
        _exit(0);
    }
    name_pid(c, "child-_Fork");
    sync_wait(s.c2p[0]);
    show("S126", "_Fork child running", id);
    sync_send(s.p2c[1]);
    reap(c, "child-_Fork");
    show("S126", "_Fork child exited", id);

    /* S126/S119: raw fork syscall — the child shares the attach's memory.
     * (Its nattch is a known difference, not compared here.) */
    sync_init(&s);
    fflush(stdout);
    volatile char *vp = (volatile char *)p;
    vp[100] = 'p';
    long rc = syscall(SYS_fork);
    if (rc == 0) {
        char ch = vp[100];      /* sees the parent's write */
        vp[101] = 'c';          /* the parent sees ours */
        syscall(SYS_write, s.c2p[1], &ch, 1);
        syscall(SYS_read, s.p2c[0], &ch, 1);
        syscall(SYS_exit_group, 0);
    }
    c = (pid_t)rc;
    name_pid(c, "child-rawfork");
    char seen = 0;
    if (read(s.c2p[0], &seen, 1) != 1) seen = '?';
    out("S119 raw fork child read parent's byte: %c", seen);
    out("S119 parent reads raw fork child's byte: %c", vp[101]);
    sync_send(s.p2c[1]);
    reap(c, "child-rawfork");

    T("cleanup", shmdt(p));
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    return 0;
}
