/* shmdt — S69 S70 S73 S75 S76 S120
 * shmdt of an attach start (nattch -1, dtime = now, lpid = caller), EINVAL
 * for unaligned, interior, anonymous, NULL and already-detached addresses;
 * munmap of a whole attach works like shmdt (and destroys a SHM_DEST
 * segment at the last one); shmdt checks no permission; a destroyed
 * segment gives its slot and pages back.
 */
#include "common.h"


static char *g_p;
static int g_id;

static void child_nobody_detach(void *arg)
{
    (void)arg;
    become(65534, 65534, 0, NULL);
    T("S76 nobody IPC_STAT", shmctl(g_id, IPC_STAT, &(struct shmid_ds){0}));
    T("S76 nobody", shmdt(g_p));
    T("S76 nobody again", shmdt(g_p));
}

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 3 * PAGE, 0600));
    show_segment("setup", "new", id);

    /* S69 */
    char *p = A("S69", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    T("S69", shmdt(p));
    show_segment("S69", "after shmdt", id);

    /* S70 */
    p = A("S70", shmat(id, NULL, 0), NULL);
    T("S70 unaligned", shmdt(p + 1));
    T("S70 unaligned", shmdt(p + PAGE - 1));
    T("S70 interior", shmdt(p + PAGE));
    T("S70 interior", shmdt(p + 2 * PAGE));
    T("S70", shmdt(NULL));
    char *anon = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    T("S70 anonymous", shmdt(anon));
    munmap(anon, PAGE);
    T("S70 unmapped", shmdt(unmapped_addr()));
    T("S70 stack", shmdt((void *)((uintptr_t)&id & ~(PAGE - 1))));
    show_segment("S70", "still attached", id);
    T("S70", shmdt(p));
    T("S70 twice", shmdt(p));
    show_segment("S70", "detached", id);

    /* S73: munmap of a whole attach works like shmdt */
    p = A("S73", shmat(id, NULL, 0), NULL);
    char *p2 = A("S73", shmat(id, NULL, SHM_RDONLY), NULL);
    show_segment("S73", "two attaches", id);
    T("S73", munmap(p, 3 * PAGE));
    show_segment("S73", "after munmap", id);
    T("S73", shmdt(p));
    T("S73", shmctl(id, IPC_RMID, NULL));
    show_segment("S73", "SHM_DEST", id);
    info_print("S73", "SHM_DEST held");
    T("S73 S75", munmap(p2, 3 * PAGE));
    show_segment("S73 S75", "after last munmap", id);
    info_print("S75", "slot and pages returned");

    /* S76: shmdt checks no permission */
    int id2 = T("S76", shmget(IPC_PRIVATE, PAGE, 0600));
    g_id = id2;
    g_p = A("S76", shmat(id2, NULL, 0), NULL);
    show_segment("S76", "before child", id2);
    in_child("child-nobody", child_nobody_detach, NULL);
    show_segment("S76", "after child", id2);
    T("S76", shmdt(g_p));
    T("S76", shmctl(id2, IPC_RMID, NULL));

    info_print("cleanup", "end");
    return 0;
}
