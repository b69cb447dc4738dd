/* shmdt_frag — S71 S72 S74 S158 S73
 * Attaches split into fragments: nattch counts mapping fragments (munmap of
 * a middle page or mprotect of part of an attach adds one, restoring the
 * protection does not merge them back); shmdt(original address) removes
 * every fragment of that attach, also after the first page was unmapped,
 * while shmdt(start of a later fragment) → EINVAL; an adjacent attach of
 * the same segment is not touched; after mremap the new address detaches
 * and the old one does not.
 */
#include "common.h"

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 4 * PAGE, 0600));
    char *p;

    /* S71: munmap of the first page, then shmdt */
    p = A("S71", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    T("S71", munmap(p, PAGE));
    print_nattch("S71", "first page unmapped", id);
    T("S71 start of remaining fragment", shmdt(p + PAGE));
    T("S71 original address", shmdt(p));
    print_nattch("S71", "after shmdt", id);
    out("S71 rest unmapped: %s", map_desc(p + 2 * PAGE));

    /* S72: munmap of a middle page splits: +1 */
    p = A("S72", shmat(id, NULL, 0), NULL);
    T("S72", munmap(p + PAGE, PAGE));
    print_nattch("S72", "middle page unmapped", id);
    T("S72 second fragment", shmdt(p + 2 * PAGE));
    T("S72", shmdt(p));
    print_nattch("S72", "after shmdt", id);
    out("S72 second fragment unmapped: %s", map_desc(p + 2 * PAGE));

    /* S72: mprotect of a part splits; restoring does not merge */
    p = A("S72", shmat(id, NULL, 0), NULL);
    T("S72", mprotect(p + PAGE, PAGE, PROT_READ));
    print_nattch("S72", "part read-only", id);
    T("S72", mprotect(p + 2 * PAGE, PAGE, PROT_READ));
    print_nattch("S72", "two parts read-only", id);
    T("S72", mprotect(p, 4 * PAGE, PROT_READ | PROT_WRITE));
    print_nattch("S72", "protection restored", id);
    out("S72 map %s", map_desc(p));
    T("S72", shmdt(p));
    print_nattch("S72", "after shmdt", id);

    /* S72: a middle piece unmapped and an end piece protected */
    p = A("S72", shmat(id, NULL, 0), NULL);
    T("S72", munmap(p + PAGE, PAGE));
    T("S72", mprotect(p + 3 * PAGE, PAGE, PROT_NONE));
    print_nattch("S72", "three fragments", id);
    T("S72", munmap(p, PAGE));
    print_nattch("S72", "first fragment unmapped", id);
    T("S72", shmdt(p));
    print_nattch("S72", "after shmdt", id);

    /* S71: an adjacent attach of the same segment is a different attach */
    char *reg = free_region(8);
    char *a1 = A("S71", shmat(id, reg, 0), reg);
    char *a2 = A("S71", shmat(id, reg + 4 * PAGE, 0), reg + 4 * PAGE);
    print_nattch("S71", "two adjacent attaches", id);
    T("S71", shmdt(a1));
    print_nattch("S71", "first detached", id);
    if (a2 != FAILED) out("S71 second still mapped: %s", map_desc(a2));
    T("S71", shmdt(a2));
    free_region_release(reg, 8);

    /* S74: mremap moves an attach */
    p = A("S74", shmat(id, NULL, 0), NULL);
    strcpy(p, "moved");
    char *dst = free_region(4);
    char *m = mremap(p, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    out("S74 mremap = %s", m == MAP_FAILED ? errname(errno) : m == dst ? "requested" : "other");
    print_nattch("S74", "after mremap", id);
    if (m != MAP_FAILED) out("S74 contents at new address: %s", m);
    T("S74 old address", shmdt(p));
    T("S74 new address", shmdt(dst));
    print_nattch("S74", "after shmdt", id);
    free_region_release(dst, 4);

    /* S158: nattch counts fragments, not attach calls */
    p = A("S158", shmat(id, NULL, 0), NULL);
    for (int i = 0; i < 4; i += 2)
        T("S158", mprotect(p + i * PAGE, PAGE, PROT_READ));
    print_nattch("S158", "one attach, four fragments", id);
    T("S158", shmctl(id, IPC_RMID, NULL));
    T("S158", munmap(p, 2 * PAGE));
    stat_short("S158", "two fragments left, SHM_DEST", id);
    T("S158", munmap(p + 2 * PAGE, PAGE));
    stat_short("S158", "one fragment left", id);
    T("S158", munmap(p + 3 * PAGE, PAGE));
    stat_short("S158 S73", "no fragment left", id);
    info_print("cleanup", "end");
    return 0;
}
