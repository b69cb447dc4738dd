/* regcall — helper for corrupt.sh.
 *
 *   regcall create KEY   create a segment with KEY, attach, write, detach;
 *                        prints its id; exit 0 on success
 *   regcall call KEY     call each of shmget/shmat/shmdt/shmctl once and print
 *                        "CALL = RESULT" per line (-1 ERRNAME on failure);
 *                        exit 0 if the program survived all of them
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#define FAILED ((void *)-1)

static const char *en(int e)
{
    switch (e) {
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOMEM: return "ENOMEM";
    case EFAULT: return "EFAULT";
    case EIO: return "EIO";
    default: {
        static char b[16];
        snprintf(b, sizeof b, "E#%d", e);
        return b;
    }
    }
}

/* SHOW("label", call): errno is read after the call (argument order is unspecified) */
#define SHOW(what, expr)                                                  \
    do {                                                                  \
        errno = 0;                                                        \
        long r_ = (long)(expr);                                           \
        show((what), r_, errno);                                          \
    } while (0)

static void show(const char *what, long r, int e)
{
    if (r == -1)
        printf("%s = -1 %s\n", what, en(e));
    else
        printf("%s = %ld\n", what, r);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s create|call KEY\n", argv[0]);
        return 2;
    }
    int key = (int)strtol(argv[2], NULL, 0);
    if (!strcmp(argv[1], "create")) {
        int id = shmget(key, 4096, IPC_CREAT | 0600);
        if (id < 0) {
            printf("shmget = -1 %s\n", en(errno));
            return 1;
        }
        char *p = shmat(id, NULL, 0);
        if (p == FAILED) {
            printf("shmat = -1 %s\n", en(errno));
            return 1;
        }
        strcpy(p, "hello");
        if (shmdt(p)) {
            printf("shmdt = -1 %s\n", en(errno));
            return 1;
        }
        printf("%d\n", id);
        return 0;
    }
    struct shmid_ds d;
    struct shminfo si;
    static char page[8192] __attribute__((aligned(4096)));
    SHOW("shmget(KEY, 0, 0)", shmget(key, 0, 0));
    SHOW("shmget(IPC_PRIVATE, 4096, IPC_CREAT|0600)", shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600));
    SHOW("shmctl(0, IPC_STAT)", shmctl(0, IPC_STAT, &d));
    SHOW("shmctl(0, IPC_INFO)", shmctl(0, IPC_INFO, (struct shmid_ds *)&si));
    SHOW("shmctl(0, IPC_RMID)", shmctl(0, IPC_RMID, NULL));
    SHOW("shmat(0, NULL, 0)", shmat(0, NULL, 0) == FAILED ? -1 : 0);
    SHOW("shmdt(page)", shmdt(page));
    return 0;
}
