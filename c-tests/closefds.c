/* closefds — S51 S69 S118 S120 under a program that closes every descriptor
 * it did not open (the classic daemon start-up loop), and one that dup2s over
 * high descriptors: nattch, attaches, fork inheritance and creation keep
 * working exactly as on the kernel, which keeps no state in descriptors.
 */
#include "common.h"
#include <sys/wait.h>

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 4 * PAGE, 0600));
    char *p = A("S51", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    p[0] = 'a';

    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    print_nattch("S51", "after closing fds 3..1023", id);

    char *q = A("S51", shmat(id, NULL, 0), NULL);
    print_nattch("S51", "second attach", id);
    out("S52 same memory: %c", q[0]);

    /* descriptors reused by the program for its own files */
    int devnull = open("/dev/null", O_RDONLY);
    for (int fd = 200; fd < 260; fd++)
        dup2(devnull, fd);
    close(devnull);

    pid_t c = fork();
    if (c == 0) {
        q[1] = 'c';
        _exit(0);
    }
    name_pid(c, "child");
    int st;
    waitpid(c, &st, 0);
    print_nattch("S120", "after child exit", id);
    out("S119 child's write: %c", p[1]);

    int id2 = T("S22", shmget(IPC_PRIVATE, PAGE, 0600));
    char *r = A("S51", shmat(id2, NULL, 0), NULL);
    print_nattch("S51", "new segment attached", id2);
    T("S69", shmdt(r));
    T("S69", shmdt(q));
    T("S69", shmdt(p));
    print_nattch("S69", "all detached", id);
    for (int fd = 200; fd < 260; fd++)
        close(fd);
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    T("cleanup", shmctl(id2, IPC_RMID, NULL));
    return 0;
}
