/* shmat_limits — S64 S52 S137
 * Address-space exhaustion: with RLIMIT_AS leaving room for less than the
 * segment, shmat → ENOMEM and nattch is unchanged; a smaller segment still
 * attaches.  Many attaches of one segment are allowed (no per-process limit).
 */
#include "common.h"

#define GIB (1UL << 30)

static int g_big, g_small;

static unsigned long vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

static void child_limited(void *arg)
{
    (void)arg;
    struct rlimit rl = {vm_size_bytes() + 256UL * 1024 * 1024, RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &rl) == -1) { out("FATAL setrlimit"); exit(96); }
    A("S64 limited", shmat(g_big, NULL, 0), NULL);
    A("S64 limited", shmat(g_big, NULL, SHM_RDONLY), NULL);
    print_nattch("S64 limited", "big", g_big);
    void *s = A("S64 limited", shmat(g_small, NULL, 0), NULL);
    print_nattch("S64 limited", "small", g_small);
    if (s != FAILED) T("S64 limited", shmdt(s));
}

int main(void)
{
    g_big = T("setup", shmget(IPC_PRIVATE, GIB, SHM_NORESERVE | 0600));
    g_small = T("setup", shmget(IPC_PRIVATE, 16 * PAGE, 0600));
    in_child("child-limited", child_limited, NULL);
    print_nattch("S64", "big after child", g_big);

    /* S137: no per-process attach limit short of vm.max_map_count */
    void *at[300];
    int ok = 0;
    for (int i = 0; i < 300; i++) {
        at[i] = shmat(g_small, NULL, i % 2 ? SHM_RDONLY : 0);
        if (at[i] == FAILED) { out("S137 attach %d = -1 %s", i, errname(errno)); break; }
        ok++;
    }
    out("S137 attaches made = %d", ok);
    print_nattch("S137", "small", g_small);
    for (int i = 0; i < ok; i++)
        if (shmdt(at[i]) == -1) out("S137 shmdt %d = -1 %s", i, errname(errno));
    print_nattch("S137", "small after detach", g_small);

    T("cleanup", shmctl(g_big, IPC_RMID, NULL));
    T("cleanup", shmctl(g_small, IPC_RMID, NULL));
    return 0;
}
