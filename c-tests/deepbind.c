/* deepbind — S155
 * SysV calls that do not go through the program's own symbol lookup reach the
 * same namespace: a library loaded with RTLD_DEEPBIND, one loaded into a new
 * link-map namespace with dlmopen (which has a libc of its own), and the
 * functions fetched with dlsym from libc's own handle. They create, find,
 * attach, stat and remove the same segments as the program, and their errno is
 * the kernel's.
 */
#include "common.h"
#include <dlfcn.h>
#include <libgen.h>

struct plugin {
    int *err;
    int (*get)(int, size_t, int);
    int (*write)(int, const char *);
    void *(*attach)(int);
    int (*detach)(void *);
    long (*nattch)(int);
    int (*rm)(int);
};

static int load(void *h, struct plugin *p)
{
    if (!h) return -1;
    p->err = dlsym(h, "plugin_errno");
    p->get = (int (*)(int, size_t, int))dlsym(h, "plugin_get");
    p->write = (int (*)(int, const char *))dlsym(h, "plugin_write");
    p->attach = (void *(*)(int))dlsym(h, "plugin_attach");
    p->detach = (int (*)(void *))dlsym(h, "plugin_detach");
    p->nattch = (long (*)(int))dlsym(h, "plugin_nattch");
    p->rm = (int (*)(int))dlsym(h, "plugin_rm");
    return p->err && p->get && p->write && p->attach && p->detach && p->nattch && p->rm ? 0 : -1;
}

static void exercise(const char *how, struct plugin *p, int key)
{
    /* The plugin creates; the program finds the same segment. */
    int id = p->get(key, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    out("%s plugin shmget(key, IPC_CREAT|IPC_EXCL) = %s %s", how, id >= 0 ? "id" : "-1", errname(*p->err));
    int mine = shmget(key, 0, 0);
    out("%s program shmget(key, 0) = %s", how, mine == id ? "the plugin's id" : "another");
    int again = p->get(key, 2 * PAGE, IPC_CREAT | IPC_EXCL | 0600);
    out("%s plugin shmget again = %d %s", how, again, errname(*p->err));
    /* Memory written by the plugin is the program's. */
    out("%s plugin write = %d", how, p->write(id, "from the plugin"));
    char *q = shmat(id, NULL, SHM_RDONLY);
    out("%s program reads: %s", how, q == FAILED ? "shmat failed" : q);
    /* Attaches count together. */
    void *pa = p->attach(id);
    out("%s plugin attach = %s", how, pa ? "ok" : errname(*p->err));
    show_nattch("  program's IPC_STAT", id);
    out("%s plugin's IPC_STAT: nattch=%ld", how, p->nattch(id));
    out("%s plugin detach = %d", how, p->detach(pa));
    int r = p->detach(pa);
    out("%s plugin detach again = %d %s", how, r, errname(*p->err));
    show_nattch("  program's IPC_STAT", id);
    /* The plugin removes; the program's attach keeps it until shmdt. */
    out("%s plugin IPC_RMID = %d", how, p->rm(id));
    r = p->rm(id);
    out("%s plugin IPC_RMID again, still attached = %d %s", how, r, errname(*p->err));
    r = p->get(key, 0, 0);
    out("%s plugin shmget(key, 0) = %d %s", how, r, errname(*p->err));
    shmdt(q);
    long na = p->nattch(id);
    out("%s plugin IPC_STAT after the last detach: %ld %s", how, na, errname(*p->err));
}

int main(void)
{
    char exe[4096], lib[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 1;
    exe[n] = 0;
    snprintf(lib, sizeof lib, "%s/plugin_shm.so", dirname(exe));

    struct plugin p;
    if (load(dlopen(lib, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND), &p) == 0)
        exercise("deepbind", &p, 0x7e570001);
    else
        out("deepbind: dlopen failed: %s", dlerror());

    if (load(dlmopen(LM_ID_NEWLM, lib, RTLD_NOW), &p) == 0)
        exercise("dlmopen", &p, 0x7e570002);
    else
        out("dlmopen: failed: %s", dlerror());

    /* libc's own handle */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    int (*get)(key_t, size_t, int) = libc ? (int (*)(key_t, size_t, int))dlsym(libc, "shmget") : NULL;
    int (*ctl)(int, int, struct shmid_ds *) = libc ? (int (*)(int, int, struct shmid_ds *))dlsym(libc, "shmctl") : NULL;
    if (get && ctl) {
        errno = 0;
        int id = get(0x7e570003, PAGE, IPC_CREAT | 0600);
        out("libc handle: shmget = %s %s", id >= 0 ? "id" : "-1", errname(errno));
        out("libc handle: program finds it: %s", shmget(0x7e570003, 0, 0) == id ? "same id" : "no");
        errno = 0;
        int r = ctl(-1, IPC_STAT, NULL);
        out("libc handle: shmctl(-1, IPC_STAT) = %d %s", r, errname(errno));
        out("libc handle: IPC_RMID = %d", ctl(id, IPC_RMID, NULL));
        show_nattch("libc handle: after IPC_RMID", id);
    }
    return 0;
}
