/* shmat_basic — S49 S50 S51 S52 S56 S62 S69 S24 S86
 * shmat(id, NULL, 0): page-aligned, top-down placement, shared read-write
 * mapping of segsz rounded up to a page; the tail of the last page is usable
 * and the byte after it faults; atime/lpid/nattch updated, ctime/dtime not;
 * several attaches of one segment in one process see the same memory;
 * SHM_RND with NULL and unknown flag bits are ignored.
 */
#include "common.h"

int main(void)
{
    int id = T("S49", shmget(IPC_PRIVATE, 5000, 0600));
    int id2 = T("S49", shmget(IPC_PRIVATE, 100, 0600));
    struct shmid_ds before;
    MUST(shmctl(id, IPC_STAT, &before));

    next_second(); /* so that an unchanged ctime is visible */

    /* S49 S51 */
    char *p = A("S49", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    out("S49 map %s", map_desc(p));
    struct shmid_ds d;
    MUST(shmctl(id, IPC_STAT, &d));
    out("S51 after shmat: nattch=%lu atime=%s lpid=%s dtime=%s ctime unchanged=%s",
        (unsigned long)d.shm_nattch, tname(d.shm_atime), pidname(d.shm_lpid),
        tname(d.shm_dtime), d.shm_ctime == before.shm_ctime ? "yes" : "no");
    out("S51 atime after ctime = %s", d.shm_atime > before.shm_ctime ? "yes" : "no");

    /* S49: a later attach lands lower (top-down like mmap(NULL)) */
    char *q = A("S49", shmat(id2, NULL, 0), NULL);
    if (q != FAILED) {
        out("S49 second attach below first = %s", q < p ? "yes" : "no");
        out("S49 map %s", map_desc(q));
    }

    /* S50: tail of the last page usable */
    out("S50 write p[4999] = %s", probe_write(p + 4999, 'e'));
    out("S50 write p[5000] = %s", probe_write(p + 5000, 'f'));
    out("S50 write p[8191] = %s", probe_write(p + 8191, 'g'));
    out("S50 read p[8191] = %s", probe_read(p + 8191));

    /* S52: second attach of the same segment */
    char *p2 = A("S52", shmat(id, NULL, 0), NULL);
    if (p2 != FAILED) {
        out("S52 distinct from first = %s", p2 != p ? "yes" : "no");
        print_nattch("S52", "two attaches", id);
        p[10] = 'x';
        out("S52 same memory: p2[10] = %c, p2[8191] = %c", p2[10], p2[8191]);
        p2[11] = 'y';
        out("S52 same memory: p[11] = %c", p[11]);
        T("S52", shmdt(p2));
        print_nattch("S52", "after one shmdt", id);
    }

    /* S62: SHM_RND with NULL ignored; unknown flag bits ignored */
    char *r1 = A("S62", shmat(id, NULL, SHM_RND), NULL);
    char *r2 = A("S62", shmat(id, NULL, 0x1000000), NULL);
    char *r3 = A("S62", shmat(id, NULL, 0x200 | 0x4000000), NULL);
    print_nattch("S62", "", id);
    if (r1 != FAILED) { out("S62 r1[10] = %c", r1[10]); T("S62", shmdt(r1)); }
    if (r2 != FAILED) { out("S62 map %s", map_desc(r2)); T("S62", shmdt(r2)); }
    if (r3 != FAILED) T("S62", shmdt(r3));

    /* S50: the first byte after the last page faults (guard page after it) */
    char *reg = free_region(1);
    char *g = A("S50 S56", shmat(id2, reg, 0), reg);
    if (g != FAILED) {
        out("S50 read g[4095] = %s", probe_read(g + 4095));
        out("S50 read g[4096] = %s", probe_read(g + 4096));
        out("S50 write g[4096] = %s", probe_write(g + 4096, 1));
        out("S50 map %s", map_desc(g));
        T("S50", shmdt(g));
    }
    free_region_release(reg, 1);

    /* S69 S86: detaches and the resulting times */
    T("S69", shmdt(p));
    if (q != FAILED) T("S69", shmdt(q));
    MUST(shmctl(id, IPC_STAT, &d));
    out("S69 after shmdt: nattch=%lu dtime=%s lpid=%s ctime unchanged=%s",
        (unsigned long)d.shm_nattch, tname(d.shm_dtime), pidname(d.shm_lpid),
        d.shm_ctime == before.shm_ctime ? "yes" : "no");

    T("cleanup", shmctl(id, IPC_RMID, NULL));
    T("cleanup", shmctl(id2, IPC_RMID, NULL));
    return 0;
}
