/* populate — S164 S165
 * MADV_POPULATE_READ over an attach: every page of the range becomes resident
 * (mincore, shm_rss), contents written through another attach or before are
 * kept, the protection stays what it was (a read-only attach stays read-only,
 * pages mprotect'ed read-only stay so), a range running past the attach or
 * not page-aligned fails as for any mapping, and a segment removed after it
 * is gone with its pages (shm_rss back to what it was).
 */
#include "common.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define NP 300 /* pages: several fault-around windows, not a multiple of 16 */

static int resident(const char *p, size_t pages)
{
    unsigned char v[NP];
    if (mincore((void *)p, pages * PAGE, v) != 0)
        return -1;
    int n = 0;
    for (size_t i = 0; i < pages; i++)
        n += v[i] & 1;
    return n;
}

static long rss_pages(void)
{
    struct shm_info si;
    if (shmctl(0, SHM_INFO, (struct shmid_ds *)&si) < 0)
        return -1;
    return (long)si.shm_rss;
}

int main(void)
{
    long rss0 = rss_pages();

    /* S164: a fresh segment, populated whole */
    int id = T("setup", shmget(IPC_PRIVATE, NP * PAGE, 0600));
    char *w = A("setup", shmat(id, NULL, 0), NULL);
    if (w == FAILED) return 1;
    out("S164 resident before = %d", resident(w, NP));
    T("S164", madvise(w, NP * PAGE, MADV_POPULATE_READ));
    out("S164 resident after = %d of %d", resident(w, NP), NP);
    out("S164 shm_rss grew by %ld", rss_pages() - rss0);
    int zero = 1;
    for (size_t i = 0; i < NP * PAGE; i += 512)
        zero &= w[i] == 0;
    out("S164 contents zero = %d", zero);
    out("S164 map %s", map_desc(w));
    out("S164 write w[0] = %s", probe_write(w, 'a'));

    /* S164: pages written before, through another attach, are kept */
    int id2 = T("setup", shmget(IPC_PRIVATE, NP * PAGE, 0600));
    char *a = A("setup", shmat(id2, NULL, 0), NULL);
    char *b = A("setup", shmat(id2, NULL, 0), NULL);
    if (a == FAILED || b == FAILED) return 1;
    for (size_t i = 0; i < NP; i += 7)
        a[i * PAGE + 5] = (char)('A' + i % 26);
    out("S164 b resident before = %d", resident(b, NP));
    T("S164", madvise(b, NP * PAGE, MADV_POPULATE_READ));
    int kept = 1;
    for (size_t i = 0; i < NP; i++)
        kept &= b[i * PAGE + 5] == (i % 7 == 0 ? (char)('A' + i % 26) : 0);
    out("S164 b resident after = %d, contents kept = %d", resident(b, NP), kept);
    b[PAGE * 3] = 'z';
    out("S164 seen through a = %c", a[PAGE * 3]);

    /* S164: part of the range read-only: populated, protection unchanged */
    T("S164", mprotect(a + 32 * PAGE, 64 * PAGE, PROT_READ));
    T("S164", madvise(a, NP * PAGE, MADV_POPULATE_READ));
    out("S164 write into read-only part = %s", probe_write(a + 40 * PAGE, 'x'));
    out("S164 write after it = %s", probe_write(a + 100 * PAGE, 'x'));

    /* S164: a read-only attach of a fresh segment */
    int id3 = T("setup", shmget(IPC_PRIVATE, NP * PAGE, 0600));
    char *ro = A("setup", shmat(id3, NULL, SHM_RDONLY), NULL);
    if (ro == FAILED) return 1;
    T("S164", madvise(ro, NP * PAGE, MADV_POPULATE_READ));
    out("S164 ro resident = %d", resident(ro, NP));
    out("S164 ro map %s", map_desc(ro));
    out("S164 ro write = %s", probe_write(ro, 'x'));

    /* S165: bad ranges fail as for any mapping */
    char *w2 = A("setup", shmat(id3, NULL, 0), NULL);
    if (w2 == FAILED) return 1;
    T("S165 unaligned", madvise(w2 + 1, 32 * PAGE, MADV_POPULATE_READ));
    T("S165 empty", madvise(w2, 0, MADV_POPULATE_READ));
    char *r = free_region(NP + 64);
    char *f = A("setup", shmat(id3, r, SHM_REMAP), r);
    if (f == FAILED) return 1;
    T("S165 past the end", madvise(f, (NP + 32) * PAGE, MADV_POPULATE_READ));
    out("S165 resident after failure = %d", resident(f, NP));
    T("S165 sub-range", madvise(f + 16 * PAGE, 48 * PAGE, MADV_POPULATE_READ));

    /* S164: a sub-range of a fresh segment: exactly its pages */
    long rss1 = rss_pages();
    int id4 = T("setup", shmget(IPC_PRIVATE, NP * PAGE, 0600));
    char *g = A("setup", shmat(id4, NULL, 0), NULL);
    if (g == FAILED) return 1;
    T("S164", madvise(g + 16 * PAGE, 64 * PAGE, MADV_POPULATE_READ));
    out("S164 sub-range resident = %d, shm_rss grew by %ld", resident(g, NP), rss_pages() - rss1);
    out("S164 resident in [16, 80) = %d", resident(g + 16 * PAGE, 64));
    T("cleanup", shmctl(id4, IPC_RMID, NULL));
    T("cleanup", shmdt(g));

    /* S164: removal frees the populated pages */
    T("cleanup", shmdt(w));
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    T("cleanup", shmdt(a));
    T("cleanup", shmdt(b));
    T("cleanup", shmctl(id2, IPC_RMID, NULL));
    T("cleanup", shmdt(ro));
    T("cleanup", shmdt(w2));
    T("cleanup", shmdt(f));
    T("cleanup", shmctl(id3, IPC_RMID, NULL));
    out("S164 shm_rss after removal grew by %ld", rss_pages() - rss0);
    return 0;
}
