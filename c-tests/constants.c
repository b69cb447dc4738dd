/* constants — S1 S2 S3 S4 S5 S6 S20 S98 S142 S143 S144 S162
 * Command and flag values, type sizes, struct layouts (compile-time facts that
 * the shim must agree with), ftok's formula, and the built-in limits as
 * IPC_INFO reports them in a fresh namespace.
 */
#include "common.h"
#include <asm-generic/hugetlb_encode.h> /* what <linux/shm.h> builds SHM_HUGE_* from */
#include <stddef.h>

#define OFF(type, field) out("layout offsetof(" #type ", " #field ") = %zu", offsetof(type, field))
#define SZ(type) out("layout sizeof(" #type ") = %zu", sizeof(type))
#define VAL(s, name) out("%s " #name " = 0%lo", s, (unsigned long)(name))

int main(void)
{
    /* S1 */
    VAL("S1", IPC_RMID);
    VAL("S1", IPC_SET);
    VAL("S1", IPC_STAT);
    VAL("S1", IPC_INFO);
    VAL("S1", SHM_LOCK);
    VAL("S1", SHM_UNLOCK);
    VAL("S1", SHM_STAT);
    VAL("S1", SHM_INFO);
    VAL("S1", SHM_STAT_ANY);
    VAL("S1", IPC_CREAT);
    VAL("S1", IPC_EXCL);
    VAL("S1", IPC_NOWAIT);
    VAL("S1", IPC_PRIVATE);
    /* S2 */
    VAL("S2", SHM_RDONLY);
    VAL("S2", SHM_RND);
    VAL("S2", SHM_REMAP);
    VAL("S2", SHM_EXEC);
    VAL("S2", SHM_HUGETLB);
    VAL("S2", SHM_NORESERVE);
    VAL("S2", SHM_DEST);
    VAL("S2", SHM_LOCKED);
    VAL("S2", SHM_R);
    VAL("S2", SHM_W);
    /* S3 */
    out("S3 SHM_HUGE_SHIFT = %d", HUGETLB_FLAG_ENCODE_SHIFT);
    out("S3 SHM_HUGE_MASK = 0x%x", HUGETLB_FLAG_ENCODE_MASK);
    out("S3 SHM_HUGE_2MB = 0x%x", (unsigned)HUGETLB_FLAG_ENCODE_2MB);
    out("S3 SHM_HUGE_1GB = 0x%x", (unsigned)HUGETLB_FLAG_ENCODE_1GB);
    /* S4 */
    out("S4 SHMLBA = %ld", (long)SHMLBA);
    /* S5 */
    SZ(key_t);
    out("S5 key_t signed = %s", (key_t)-1 < 0 ? "yes" : "no");
    SZ(shmatt_t);
    SZ(pid_t);
    SZ(uid_t);
    SZ(gid_t);
    SZ(mode_t);
    /* S142 */
    SZ(struct ipc_perm);
    OFF(struct ipc_perm, __key);
    OFF(struct ipc_perm, uid);
    OFF(struct ipc_perm, gid);
    OFF(struct ipc_perm, cuid);
    OFF(struct ipc_perm, cgid);
    OFF(struct ipc_perm, mode);
    OFF(struct ipc_perm, __seq);
    OFF(struct ipc_perm, __pad2);
    OFF(struct ipc_perm, __glibc_reserved1);
    OFF(struct ipc_perm, __glibc_reserved2);
    /* S143 */
    SZ(struct shmid_ds);
    OFF(struct shmid_ds, shm_perm);
    OFF(struct shmid_ds, shm_segsz);
    OFF(struct shmid_ds, shm_atime);
    OFF(struct shmid_ds, shm_dtime);
    OFF(struct shmid_ds, shm_ctime);
    OFF(struct shmid_ds, shm_cpid);
    OFF(struct shmid_ds, shm_lpid);
    OFF(struct shmid_ds, shm_nattch);
    OFF(struct shmid_ds, __glibc_reserved5);
    OFF(struct shmid_ds, __glibc_reserved6);
    /* S144 */
    SZ(struct shminfo);
    SZ(struct shm_info);
    OFF(struct shm_info, used_ids);
    OFF(struct shm_info, shm_tot);
    OFF(struct shm_info, shm_rss);
    OFF(struct shm_info, shm_swp);
    OFF(struct shm_info, swap_attempts);
    OFF(struct shm_info, swap_successes);

    /* S20: ftok is pure arithmetic on stat(); the kernel only sees the key */
    struct stat st;
    MUST(stat("/", &st));
    key_t k = ftok("/", 0x5A);
    key_t f = (key_t)((st.st_ino & 0xffff) | ((st.st_dev & 0xff) << 16) | ((0x5Au & 0xff) << 24));
    out("S20 ftok(\"/\", 0x5A) matches formula = %s", k == f ? "yes" : "no");

    /* S6 S98: built-in limits through IPC_INFO in a fresh namespace */
    struct shminfo si;
    poison(&si, sizeof si);
    long r = T("S6", shmctl(0, IPC_INFO, (struct shmid_ds *)&si));
    if (r != -1) {
        out("S6 shmmax=%lu shmmin=%lu shmmni=%lu shmseg=%lu shmall=%lu", si.shmmax,
            si.shmmin, si.shmmni, si.shmseg, si.shmall);
        out("S98 unused=%lu,%lu,%lu,%lu", si.__glibc_reserved1, si.__glibc_reserved2, si.__glibc_reserved3,
            si.__glibc_reserved4);
    }
    return 0;
}
