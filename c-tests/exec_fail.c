/* exec_fail — S121
 * An exec that fails leaves the process attached: nattch is unchanged after a
 * failed execv and execvp (shmshim detaches before an exec and counts the
 * attaches again when it fails).
 */
#include "common.h"
int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, PAGE, 0600));
    char *p = A("setup", shmat(id, NULL, 0), NULL);
    char *argv[] = {"/nonexistent/prog", NULL};
    errno = 0;
    int r = execv("/nonexistent/prog", argv);
    out("S121 failed execv = %d %s", r, errname(errno));
    errno = 0;
    r = execvp("no-such-program-anywhere", argv);
    out("S121 failed execvp = %d %s", r, errname(errno));
    struct shmid_ds d;
    shmctl(id, IPC_STAT, &d);
    out("S121 after failed execs: nattch=%lu", (unsigned long)d.shm_nattch);
    p[0] = 1;
    T("S121", shmdt(p));
    shmctl(id, IPC_STAT, &d);
    out("S121 after shmdt: nattch=%lu", (unsigned long)d.shm_nattch);
    T("S121", shmctl(id, IPC_RMID, NULL));
    return 0;
}
