/* clone_vm — S118 S120 S126
 * A clone(CLONE_VM) child shares its parent's memory, attaches included: the
 * attaches are the parent's VMAs, so nattch does not change when it is made or
 * when it exits, and its SysV calls act on the same attaches. (shm_lpid after
 * such a child's call is not compared: README, Known differences.)
 */
#include "common.h"
#include <sched.h>

static int id;
static char *p;

static int child(void *arg)
{
    (void)arg;
    struct shmid_ds d;
    int r = shmctl(id, IPC_STAT, &d);
    p[1] = 'c'; /* the parent's attach, written by the child */
    if (arg && shmdt(arg) != 0) /* detaches the parent's attach: the memory is one */
        return 2;
    /* exit without printing (stdio is the parent's) */
    return r == 0 && d.shm_nattch == 2 ? 0 : 1;
}

int main(void)
{
    static char stack[256 * 1024];
    id = T("setup", shmget(IPC_PRIVATE, PAGE, 0600));
    p = A("setup", shmat(id, NULL, 0), NULL);
    char *q = A("setup", shmat(id, NULL, 0), NULL);
    show_nattch("S126 two attaches", id);
    fflush(stdout);
    pid_t c = clone(child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
    if (c < 0) { out("FATAL clone %s", errname(errno)); return 1; }
    int st;
    waitpid(c, &st, 0);
    out("S126 CLONE_VM child saw nattch=2: %s", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "yes" : "no");
    out("S126 child's write seen: %c", p[1] ? p[1] : '0');
    show_nattch("S126 after the CLONE_VM child exited", id);
    T("S126", shmdt(q));
    show_nattch("S126 after the parent's shmdt", id);
    q = A("S126", shmat(id, NULL, 0), NULL);
    fflush(stdout);
    c = clone(child, stack + sizeof stack, CLONE_VM | SIGCHLD, q);
    if (c < 0) { out("FATAL clone %s", errname(errno)); return 1; }
    name_pid(c, "clone-child");
    waitpid(c, &st, 0);
    out("S126 CLONE_VM child detached the parent's attach: %s", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "yes" : "no");
    show_nattch("S126 after the child's shmdt", id);
    T("S126", shmdt(p));
    show_nattch("S126 after the last shmdt", id);
    T("S126", shmctl(id, IPC_RMID, NULL));
    return 0;
}
