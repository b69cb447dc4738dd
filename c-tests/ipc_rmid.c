/* ipc_rmid — S93 S94 S95 S96 S97 S66 S75 S83 S18 S31 S91 S92 S105 S111 S157 S99
 * IPC_RMID: immediate destruction at nattch 0; deferred destruction while
 * attached (SHM_DEST, key 0, id still usable for IPC_STAT/SHM_STAT/IPC_SET/
 * SHM_LOCK/shmat, memory usable), repeat IPC_RMID returns 0, buf ignored,
 * ctime unchanged; the segment goes away at the last detach.
 */
#include "common.h"

#define K1 0x5EED0301

int main(void)
{
    /* S93: nattch 0 → destroyed at once */
    int a = T("S93", shmget(K1, 100, IPC_CREAT | 0600));
    T("S93", shmctl(a, IPC_RMID, NULL));
    stat_print("S93", "after IPC_RMID", a);
    T("S93", shmctl(a, IPC_RMID, NULL));
    T("S93", shmget(K1, 0, 0));
    info_print("S93", "empty");

    /* S96: buf ignored, even a wild pointer */
    int b = T("S96", shmget(IPC_PRIVATE, 100, 0600));
    T("S96", shmctl(b, IPC_RMID, (struct shmid_ds *)unmapped_addr()));
    int b2 = T("S96", shmget(IPC_PRIVATE, 100, 0600));
    T("S96", shmctl(b2, IPC_RMID, (struct shmid_ds *)1));

    /* S94: deferred destruction */
    int c = T("S94", shmget(K1, 5000, IPC_CREAT | 0640));
    char *p = A("S94", shmat(c, NULL, 0), NULL);
    if (p == FAILED) return 1;
    strcpy(p, "payload");
    struct shmid_ds before;
    MUST(shmctl(c, IPC_STAT, &before));
    next_second();
    T("S94", shmctl(c, IPC_RMID, NULL));
    /* S83 S97: still readable, SHM_DEST set, key 0, ctime unchanged */
    stat_print("S94 S83", "after IPC_RMID", c);
    struct shmid_ds d;
    MUST(shmctl(c, IPC_STAT, &d));
    out("S97 ctime unchanged = %s", d.shm_ctime == before.shm_ctime ? "yes" : "no");
    info_print("S94", "SHM_DEST counts");
    /* S18 S31: lookups by key fail */
    T("S94", shmget(K1, 0, 0));
    T("S94", shmget(0, 0, 0));
    /* S95: repeat IPC_RMID */
    T("S95", shmctl(c, IPC_RMID, NULL));
    T("S95", shmctl(c, IPC_RMID, (struct shmid_ds *)8));
    /* S94: memory still usable */
    out("S94 memory = %s", p);
    p[4999] = 'z';
    /* S105: SHM_STAT by index sees it, key 0 */
    struct shmid_ds s;
    poison(&s, sizeof s);
    long r = T("S105", shmctl(c & 32767, SHM_STAT, &s));
    if (r != -1) print_ds("S105", "SHM_STAT", &s);
    poison(&s, sizeof s);
    r = T("S105", shmctl(c & 32767, SHM_STAT_ANY, &s));
    if (r != -1) print_ds("S105", "SHM_STAT_ANY", &s);
    /* S99: the highest index counts SHM_DEST segments */
    struct shminfo si;
    T("S99", shmctl(0, IPC_INFO, (struct shmid_ds *)&si));
    /* S91: IPC_SET keeps SHM_DEST */
    MUST(shmctl(c, IPC_STAT, &d));
    d.shm_perm.mode = 0604;
    T("S91", shmctl(c, IPC_SET, &d));
    stat_short("S91", "after IPC_SET", c);
    /* S111: SHM_LOCK/UNLOCK on SHM_DEST */
    T("S111", shmctl(c, SHM_LOCK, NULL));
    stat_short("S111", "locked", c);
    T("S111", shmctl(c, SHM_UNLOCK, NULL));
    stat_short("S111", "unlocked", c);
    /* S66 S157: attach after IPC_RMID works and counts */
    char *q = A("S66", shmat(c, NULL, SHM_RDONLY), NULL);
    print_nattch("S66", "after second attach", c);
    if (q != FAILED) out("S66 q sees = %s, q[4999] = %c", q, q[4999]);
    /* a new segment with the same key is independent */
    int c2 = T("S94", shmget(K1, 10, IPC_CREAT | IPC_EXCL | 0600));
    T("S94", shmget(K1, 0, 0));
    if (q != FAILED) T("S94", shmdt(q));
    print_nattch("S94", "after first detach", c);
    T("S94", shmdt(p));
    /* S75: destroyed at the last detach */
    stat_print("S75", "after last detach", c);
    A("S66", shmat(c, NULL, 0), NULL);
    T("S75", shmctl(c, IPC_RMID, NULL));
    T("S75", shmctl(c, SHM_LOCK, NULL));
    poison(&s, sizeof s);
    T("S75", shmctl(c & 32767, SHM_STAT_ANY, &s));
    info_print("S75", "one segment left");
    T("S99", shmctl(0, IPC_INFO, (struct shmid_ds *)&si));

    /* S92: root removes a mode-0000 segment */
    int z = T("S92", shmget(IPC_PRIVATE, 1, 0));
    T("S92", shmctl(z, IPC_RMID, NULL));

    T("cleanup", shmctl(c2, IPC_RMID, NULL));
    info_print("cleanup", "end");
    return 0;
}
