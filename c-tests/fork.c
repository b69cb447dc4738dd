/* fork — S118 S119 S120 S122 S123 S125 S85 S73 S51 S69
 * Attaches across fork: the child inherits each attach (nattch +1 per
 * attach at fork time, lpid = parent, atime = now), writes through the
 * inherited attach are shared, exit and SIGKILL detach (lpid = child,
 * dtime = now), the last detach of a SHM_DEST segment by an exiting child
 * destroys it, threads do not change nattch.
 */
#include "common.h"
#include <pthread.h>


static char *g_p;

static void *thread_fn(void *arg)
{
    long i = (long)arg;
    g_p[100 + i] = (char)('a' + i);
    return NULL;
}

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 3 * PAGE, 0600));
    char *p = A("setup", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    strcpy(p, "parent");
    show_segment("S118", "before fork", id);

    /* S118 S119 S120: fork, child writes, child exits */
    struct sync2 s;
    sync_init(&s);
    pid_t c = fork();
    if (c == 0) {
        sync_wait(s.p2c[0]);
        out("S118 child sees: %s", p);
        strcpy(p, "child");
        sync_send(s.c2p[1]);
        sync_wait(s.p2c[0]);
        exit(0);
    }
    name_pid(c, "child1");
    show_segment("S118", "after fork", id);
    sync_send(s.p2c[1]);
    sync_wait(s.c2p[0]);
    out("S119 parent sees: %s", p);
    sync_send(s.p2c[1]);
    reap(c, "child1");
    show_segment("S120", "after child exit", id);

    /* S118: two attaches → two inherited */
    char *p2 = A("S118", shmat(id, NULL, SHM_RDONLY), NULL);
    sync_init(&s);
    c = fork();
    if (c == 0) {
        sync_wait(s.p2c[0]);
        /* S120: an attach of the child's own, never detached */
        void *own = shmat(id, NULL, 0);
        out("S120 child own attach = %s", own == FAILED ? errname(errno) : "ok");
        sync_send(s.c2p[1]);
        sync_wait(s.p2c[0]);
        exit(0);
    }
    name_pid(c, "child2");
    show_segment("S118", "two attaches after fork", id);
    sync_send(s.p2c[1]);
    sync_wait(s.c2p[0]);
    show_segment("S120", "child attached once more", id);
    sync_send(s.p2c[1]);
    reap(c, "child2");
    show_segment("S120", "after child2 exit", id);
    if (p2 != FAILED) T("S118", shmdt(p2));

    /* S122: SIGKILL detaches like exit */
    sync_init(&s);
    c = fork();
    if (c == 0) {
        void *own = shmat(id, NULL, 0);
        (void)own;
        sync_send(s.c2p[1]);
        for (;;) pause();
    }
    name_pid(c, "child3");
    sync_wait(s.c2p[0]);
    show_segment("S122", "child3 alive with 2", id);
    kill(c, SIGKILL);
    int st;
    waitpid(c, &st, 0);
    out("S122 child3 killed by SIGKILL = %s", WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL ? "yes" : "no");
    show_segment("S122", "after SIGKILL", id);

    /* S125: threads share the address space, nattch unchanged */
    g_p = p;
    pthread_t th[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, thread_fn, (void *)i);
    show_segment("S125", "with threads", id);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    out("S125 threads wrote: %.4s", p + 100);
    show_segment("S125", "after threads", id);

    /* S123: exiting child holds the last attach of a SHM_DEST segment */
    int id2 = T("S123", shmget(0x5EED0901, PAGE, IPC_CREAT | 0600));
    char *q = A("S123", shmat(id2, NULL, 0), NULL);
    sync_init(&s);
    c = fork();
    if (c == 0) {
        sync_wait(s.p2c[0]);
        strcpy(q, "last");
        exit(0);
    }
    name_pid(c, "child4");
    T("S123", shmdt(q));
    T("S123", shmctl(id2, IPC_RMID, NULL));
    show_segment("S123", "held only by child4", id2);
    T("S123", shmget(0x5EED0901, 0, 0));
    sync_send(s.p2c[1]);
    reap(c, "child4");
    show_segment("S123", "after child4 exit", id2);
    info_print("S123", "one segment left");

    T("cleanup", shmdt(p));
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
