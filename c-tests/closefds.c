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

    /* a regular file of the program's at every high number (mappable, unlike
     * /dev/null, and read at an offset of its own): attaches still map the
     * segments' memory */
    r[0] = 'r';
    char path[] = "/tmp/closefds.XXXXXX";
    int f = T("setup", mkstemp(path));
    unlink(path);
    static char buf[4 * PAGE];
    memset(buf, 'F', sizeof buf);
    T("setup", (int)write(f, buf, sizeof buf));
    T("setup", (int)lseek(f, PAGE, SEEK_SET));
    for (int fd = 200; fd < 1024; fd++)
        dup2(f, fd);
    close(f);
    char *s1 = A("S51", shmat(id, NULL, 0), NULL);
    char *s2 = A("S51", shmat(id2, NULL, 0), NULL);
    char *s3 = A("S53", shmat(id2, NULL, SHM_RDONLY), NULL);
    if (s1 == FAILED || s2 == FAILED || s3 == FAILED) return 1;
    out("S52 after dup2 of a file over high numbers: %c %c %c", s1[0], s2[0], s3[0]);
    print_nattch("S51", "after dup2 of a file", id2);
    T("S69", shmdt(s3));
    T("S69", shmdt(s2));
    T("S69", shmdt(s1));
    for (int fd = 200; fd < 1024; fd++)
        close(fd);
    T("S69", shmdt(r));
    T("S69", shmdt(q));
    T("S69", shmdt(p));
    print_nattch("S69", "all detached", id);
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    T("cleanup", shmctl(id2, IPC_RMID, NULL));
    return 0;
}
