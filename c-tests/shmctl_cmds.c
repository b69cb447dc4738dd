/* shmctl_cmds — S77 S78 S15 S152
 * shmctl command validation: negative cmd or id → EINVAL before anything
 * else; any value outside S1 (4, 5, 10, 16, 99, IPC_64 = 0x100, IPC_STAT|
 * IPC_64 = 0x102, ...) → EINVAL with a valid id, an invalid id and any buf.
 */
#include "common.h"

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 100, 0600));
    struct shmid_ds d;
    static const int bad[] = {4, 5, 6, 7, 8, 9, 10, 16, 17, 99, 0x100, 0x101, 0x102, 0x103,
                              0x10b, 0x10d, 0x10e, 0x10f, 0x10002, 0x7fffffff};
    char lbl[80];

    /* S77 */
    T("S77", shmctl(id, -1, &d));
    T("S77", shmctl(id, -2147483647 - 1, &d));
    T("S77", shmctl(id, -1, NULL));
    T("S77", shmctl(-1, -1, NULL));
    T("S77", shmctl(id + 32768, -1, NULL));

    /* S78 */
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(lbl, sizeof lbl, "shmctl(id, 0x%x, &d)", bad[i]);
        TL("S78", lbl, shmctl(id, bad[i], &d));
        snprintf(lbl, sizeof lbl, "shmctl(id, 0x%x, NULL)", bad[i]);
        TL("S78", lbl, shmctl(id, bad[i], NULL));
        snprintf(lbl, sizeof lbl, "shmctl(id+32768, 0x%x, &d)", bad[i]);
        TL("S78", lbl, shmctl(id + 32768, bad[i], &d));
        snprintf(lbl, sizeof lbl, "shmctl(-1, 0x%x, &d)", bad[i]);
        TL("S78", lbl, shmctl(-1, bad[i], &d));
    }
    /* the valid commands still work, and nothing above changed the segment */
    stat_print("S78", "unchanged", id);
    T("S78", shmctl(id, IPC_RMID, NULL));
    return 0;
}
