/* plugin_shm.so — a library that uses SysV shm itself, loaded by deepbind.c with
 * RTLD_DEEPBIND and with dlmopen. Each function returns its result and stores
 * the errno the plugin itself sees. */
#include <errno.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

int plugin_errno;

int plugin_get(int key, size_t size, int flg)
{
    errno = 0;
    int r = shmget(key, size, flg);
    plugin_errno = errno;
    return r;
}

/* Attaches, writes msg, detaches: 0 or -1. */
int plugin_write(int id, const char *msg)
{
    errno = 0;
    char *p = shmat(id, NULL, 0);
    if (p == (void *)-1) {
        plugin_errno = errno;
        return -1;
    }
    strcpy(p, msg);
    int r = shmdt(p);
    plugin_errno = errno;
    return r;
}

/* Attaches and keeps the attach: the address or NULL. */
void *plugin_attach(int id)
{
    errno = 0;
    void *p = shmat(id, NULL, 0);
    plugin_errno = errno;
    return p == (void *)-1 ? NULL : p;
}

int plugin_detach(void *p)
{
    errno = 0;
    int r = shmdt(p);
    plugin_errno = errno;
    return r;
}

/* nattch as the plugin sees it, or -1. */
long plugin_nattch(int id)
{
    struct shmid_ds d;
    errno = 0;
    if (shmctl(id, IPC_STAT, &d) == -1) {
        plugin_errno = errno;
        return -1;
    }
    plugin_errno = 0;
    return (long)d.shm_nattch;
}

int plugin_rm(int id)
{
    errno = 0;
    int r = shmctl(id, IPC_RMID, NULL);
    plugin_errno = errno;
    return r;
}
