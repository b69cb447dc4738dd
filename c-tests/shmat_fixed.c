/* shmat_fixed — S56 S57 S58 S59 S60 S62 S63 S65 S52
 * Attaching at a given address: exact placement, alignment and SHM_RND,
 * overlap with another attach or with anonymous memory (EINVAL) unless
 * SHM_REMAP, SHM_REMAP replacing contents, SHM_REMAP without address,
 * addresses outside user space (ENOMEM) or wrapping (EINVAL), and the order
 * of those checks against an invalid id.
 */
#include "common.h"

int main(void)
{
    int one = T("setup", shmget(IPC_PRIVATE, 4096, 0600));
    int two = T("setup", shmget(IPC_PRIVATE, 8000, 0600));
    int stale = T("setup", shmget(IPC_PRIVATE, 1, 0600));
    T("setup", shmctl(stale, IPC_RMID, NULL));

    char *reg = free_region(8);

    /* S56: page-aligned free address → exactly there */
    char *a = A("S56", shmat(one, reg + 2 * PAGE, 0), reg + 2 * PAGE);
    if (a != FAILED) {
        strcpy(a, "one");
        out("S56 map %s", map_desc(a));
    }

    /* S57: unaligned → EINVAL; SHM_RND rounds down to SHMLBA */
    A("S57", shmat(two, reg + 5 * PAGE + 123, 0), NULL);
    A("S57", shmat(two, reg + 5 * PAGE + 1, SHM_RDONLY), NULL);
    char *b = A("S57", shmat(two, reg + 5 * PAGE + 123, SHM_RND), reg + 5 * PAGE);
    char *c = A("S57", shmat(two, reg + 5 * PAGE, SHM_RND | SHM_REMAP), reg + 5 * PAGE);
    print_nattch("S57", "two", two);
    if (c != FAILED && c != b) T("S57", shmdt(c));
    if (b != FAILED) T("S57", shmdt(b));
    print_nattch("S57", "two", two);

    /* S58: overlap with another attach (exact or partial) → EINVAL */
    A("S58", shmat(one, reg + 2 * PAGE, 0), NULL);
    A("S58", shmat(two, reg + 1 * PAGE, 0), NULL);   /* [1,3) overlaps [2,3) */
    A("S58", shmat(two, reg + 2 * PAGE, SHM_RDONLY), NULL);
    A("S58", shmat(two, reg + 2 * PAGE + 7, SHM_RND), NULL);
    print_nattch("S58 unchanged", "one", one);
    print_nattch("S58 unchanged", "two", two);
    /* a failed attach of a segment never attached leaves its atime and lpid 0 */
    int three = T("setup", shmget(IPC_PRIVATE, PAGE, 0600));
    A("S58", shmat(three, reg + 2 * PAGE, 0), NULL);
    stat_short("S58 unchanged", "three", three);
    T("cleanup", shmctl(three, IPC_RMID, NULL));
    /* adjacent is fine */
    char *adj = A("S58", shmat(two, reg, 0), reg);
    if (adj != FAILED) T("S58", shmdt(adj));

    /* S58: overlap with anonymous memory → EINVAL */
    char *anon = mmap(reg + 5 * PAGE, 2 * PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (anon == MAP_FAILED) { out("FATAL mmap"); return 1; }
    strcpy(anon, "anonymous");
    A("S58", shmat(two, reg + 5 * PAGE, 0), NULL);
    A("S58", shmat(one, reg + 6 * PAGE, 0), NULL);
    A("S58", shmat(two, reg + 4 * PAGE, 0), NULL);
    /* the guard page below the region is a mapping too */
    A("S58", shmat(one, reg - PAGE, 0), NULL);
    out("S58 anon intact = %s", strcmp(anon, "anonymous") == 0 ? "yes" : "no");

    /* S59: SHM_REMAP replaces the anonymous memory */
    char *r = A("S59", shmat(two, reg + 5 * PAGE, SHM_REMAP), reg + 5 * PAGE);
    if (r != FAILED) {
        out("S59 contents now segment's = %s", r[0] == 0 ? "yes" : "no");
        out("S59 map %s", map_desc(r));
        r[4096] = 'R';
    }
    /* S59: SHM_REMAP over another attach (of another segment) */
    char *r2 = A("S59", shmat(two, reg + 2 * PAGE, SHM_REMAP), reg + 2 * PAGE);
    if (r2 != FAILED) {
        out("S59 r2 shows two: r2[4096] = %c", r2[4096]);
        out("S59 map %s", map_desc(r2));
    }
    print_nattch("S59", "one (replaced)", one);
    print_nattch("S59", "two", two);

    /* S60: SHM_REMAP needs an address */
    A("S60", shmat(two, NULL, SHM_REMAP), NULL);
    A("S60", shmat(two, (void *)100, SHM_RND | SHM_REMAP), NULL);
    A("S60", shmat(two, (void *)4095, SHM_RND | SHM_REMAP), NULL);
    A("S60", shmat(two, (void *)100, SHM_REMAP), NULL);

    /* S63: outside user space → ENOMEM; wrap → EINVAL */
    A("S63", shmat(one, (void *)0x7ffffffff000UL, 0), NULL);
    A("S63", shmat(two, (void *)0x7fffffffe000UL, 0), NULL); /* end beyond */
    A("S63", shmat(one, (void *)0x800000000000UL, 0), NULL);
    A("S63", shmat(one, (void *)0xffff800000000000UL, 0), NULL);
    A("S63", shmat(one, (void *)0xfffffffffffff000UL, SHM_REMAP), NULL);
    A("S63", shmat(two, (void *)0xfffffffffffff000UL, 0), NULL); /* wraps */
    A("S63", shmat(two, (void *)0xffffffffffffe000UL, 0), NULL);
    print_nattch("S63 unchanged", "two", two);

    /* S65: order: negative id / alignment / lookup before overlap and mapping errors */
    A("S65", shmat(-1, reg + 1, 0), NULL);
    A("S65", shmat(stale, reg + 1, 0), NULL);
    A("S65", shmat(stale, reg + 2 * PAGE, 0), NULL);
    A("S65", shmat(stale, (void *)0x800000000000UL, 0), NULL);
    A("S65", shmat(one, (void *)0x800000000001UL, 0), NULL);
    A("S65", shmat(stale, NULL, SHM_REMAP), NULL);

    if (r2 != FAILED) T("cleanup", shmdt(r2));
    if (r != FAILED) T("cleanup", shmdt(r));
    T("S70 replaced attach is gone", shmdt(a));
    print_nattch("end", "one", one);
    print_nattch("end", "two", two);
    free_region_release(reg, 8);
    munmap(reg, 8 * PAGE);
    T("cleanup", shmctl(one, IPC_RMID, NULL));
    T("cleanup", shmctl(two, IPC_RMID, NULL));
    return 0;
}
