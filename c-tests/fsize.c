/* fsize — S167
 * RLIMIT_FSIZE limits the files a process writes, not its SysV segments: a
 * process whose file size limit (soft, or soft and hard) is far below a
 * segment's size creates it, attaches it, populates and writes it, attaches a
 * segment another process created and nobody mapped yet, and is never sent
 * SIGXFSZ; its limit is what it set afterwards.
 */
#include "common.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define SZ (16UL << 20)

static void limited(const char *tag, int other, rlim_t soft, rlim_t hard)
{
    struct rlimit r = { soft, hard };
    T("setup", setrlimit(RLIMIT_FSIZE, &r));
    int id = T(tag, shmget(IPC_PRIVATE, SZ, 0600));
    char *p = A(tag, shmat(id, NULL, 0), NULL);
    if (p != FAILED) {
        T(tag, madvise(p, SZ, MADV_POPULATE_READ));
        p[SZ - 1] = 'z';
        out("%s own segment last byte = %c", tag, p[SZ - 1]);
        T(tag, shmdt(p));
    }
    T(tag, shmctl(id, IPC_RMID, NULL));
    /* a segment another process created and nobody has mapped */
    char *q = A(tag, shmat(other, NULL, 0), NULL);
    if (q != FAILED) {
        q[SZ / 2] = 'q';
        T(tag, shmdt(q));
    }
    struct rlimit now;
    getrlimit(RLIMIT_FSIZE, &now);
    out("%s limit after = %s %s", tag, now.rlim_cur == soft ? "as set" : "changed",
        now.rlim_max == hard ? "as set" : "changed");
}

int main(void)
{
    /* the namespace exists before any limit is set */
    struct shminfo si;
    T("setup", shmctl(0, IPC_INFO, (struct shmid_ds *)&si) >= 0);
    const char *tags[2] = { "S167 soft", "S167 soft+hard" };
    for (int k = 0; k < 2; k++) {
        int other = T("setup", shmget(IPC_PRIVATE, SZ, 0600));
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGXFSZ, SIG_DFL);
            limited(tags[k], other, 4096, k == 0 ? RLIM_INFINITY : 4096);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        out("%s child %s", tags[k], WIFEXITED(st) ? "exited" : WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "?");
        char *q = A("setup", shmat(other, NULL, SHM_RDONLY), NULL);
        if (q != FAILED) {
            out("%s written by the child = %c", tags[k], q[SZ / 2] ? q[SZ / 2] : '0');
            T("cleanup", shmdt(q));
        }
        T("cleanup", shmctl(other, IPC_RMID, NULL));
    }
    return 0;
}
