/* hugetlb — S3 S45 S46 S47 S110 S43
 * SHM_HUGETLB on a machine with no huge pages reserved: ENOMEM as root
 * unless SHM_NORESERVE; size codes (2 MiB and 1 GiB accepted, others EINVAL,
 * checked before EPERM); EPERM for callers without CAP_IPC_LOCK; requested
 * segsz kept, shm_tot in 4 KiB pages, no SHM_HUGETLB bit in mode; attaches
 * rounded to 2 MiB and must be 2 MiB aligned; SHM_LOCK returns 0 without
 * setting SHM_LOCKED.
 */
#include "common.h"

#define HUGE (2UL << 20)
#define H2M (21 << 26)
#define H1G (30 << 26)

static void child_unpriv(void *arg)
{
    (void)arg;
    become(1001, 2001, 0, NULL);
    T("S45 uid1001", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | 0600));
    T("S45 uid1001", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | 0600));
    T("S45 uid1001", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | H2M | 0600));
    T("S45 uid1001", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | (13 << 26) | 0600));
    T("S45 uid1001", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | (25 << 26) | 0600));
    /* ordinary segments are fine, and the size code is ignored without SHM_HUGETLB */
    int id = T("S3 uid1001", shmget(IPC_PRIVATE, 4096, (13 << 26) | 0600));
    if (id != -1) T("S3 uid1001", shmctl(id, IPC_RMID, NULL));
}

int main(void)
{
    /* S46: root without a huge page pool */
    T("S46", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | 0600));
    T("S46", shmget(IPC_PRIVATE, HUGE, SHM_HUGETLB | H2M | 0600));
    int a = T("S46", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | 0600));
    int b = T("S46", shmget(0x5EED0A01, 5000, IPC_CREAT | SHM_HUGETLB | SHM_NORESERVE | H2M | 0640));
    int g = T("S3", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | H1G | 0600));

    /* S3 S45: unsupported size codes → EINVAL */
    T("S3", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | (13 << 26) | 0600));
    T("S3", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | (25 << 26) | 0600));
    T("S3", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | SHM_NORESERVE | (63 << 26) | 0600));
    T("S3", shmget(IPC_PRIVATE, 4096, SHM_HUGETLB | (12 << 26) | 0600));
    /* S43: size EINVAL before the hugetlb checks */
    T("S43", shmget(IPC_PRIVATE, 0, SHM_HUGETLB | SHM_NORESERVE | 0600));

    /* S47 */
    stat_print("S47", "4096 hugetlb", a);
    stat_print("S47", "5000 hugetlb", b);
    stat_print("S47", "1G hugetlb", g);
    info_print("S47", "three hugetlb segments");

    char *p = A("S47", shmat(b, NULL, 0), NULL);
    if (p != FAILED) {
        out("S47 2MiB aligned = %s", ((uintptr_t)p % HUGE) ? "no" : "yes");
        out("S47 map %s", map_desc(p));
        print_nattch("S47", "", b);
        T("S47", shmdt(p));
    }
    /* fixed addresses: 2 MiB aligned works, 4 KiB aligned does not */
    char *r = mmap(NULL, 3 * HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) { out("FATAL mmap"); return 1; }
    char *al = (char *)(((uintptr_t)r + HUGE - 1) & ~(HUGE - 1));
    munmap(al, HUGE);
    A("S47", shmat(b, al + PAGE, 0), NULL);
    A("S47", shmat(b, al + PAGE, SHM_RND), NULL);
    char *f = A("S47", shmat(b, al, 0), al);
    if (f != FAILED) T("S47", shmdt(f));
    munmap(r, 3 * HUGE);

    /* S110: SHM_LOCK returns 0 but sets no bit */
    T("S110", shmctl(b, SHM_LOCK, NULL));
    stat_short("S110", "after SHM_LOCK", b);
    T("S110", shmctl(b, SHM_UNLOCK, NULL));
    stat_short("S110", "after SHM_UNLOCK", b);

    /* S45: unprivileged */
    in_child("child-unpriv", child_unpriv, NULL);

    T("cleanup", shmctl(a, IPC_RMID, NULL));
    T("cleanup", shmctl(b, IPC_RMID, NULL));
    T("cleanup", shmctl(g, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
