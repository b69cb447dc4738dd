/* ids_window — S10 S11 S9
 * The cyclic allocation window W = max(64, in_use*3/2): with a few segments
 * held, create/remove cycles wrap at 64 and then take the lowest free index
 * (seq + 1); with ~100 held, the window widens beyond 64.
 */
#include "common.h"

#define MAXV 400


static int held[MAXV], nheld;

static void hold(const char *s, int n)
{
    int v[MAXV];
    for (int i = 0; i < n; i++) {
        v[i] = shmget(IPC_PRIVATE, 1, 0600);
        if (v[i] == -1) out("%s hold shmget = -1 %s", s, errname(errno));
        else held[nheld++] = v[i];
    }
    print_ranges(s, v, n);
}

static void cycles(const char *s, int n)
{
    int v[MAXV];
    for (int i = 0; i < n; i++) {
        v[i] = shmget(IPC_PRIVATE, 1, 0600);
        if (v[i] == -1) out("%s cycle shmget = -1 %s", s, errname(errno));
        else if (shmctl(v[i], IPC_RMID, NULL) == -1)
            out("%s cycle IPC_RMID = -1 %s", s, errname(errno));
    }
    print_ranges(s, v, n);
}

static void release(int id)
{
    for (int i = 0; i < nheld; i++)
        if (held[i] == id) {
            T("S9", shmctl(id, IPC_RMID, NULL));
            held[i] = held[--nheld];
            return;
        }
    out("release: %d not held", id);
}

int main(void)
{
    /* 10 held, one hole at 3: the wrap goes to the lowest free index */
    hold("S10 hold10", 10);
    release(3);
    cycles("S10 cycles-with-9-held", 70);

    /* widen the window: hold 100 more */
    hold("S10 hold100", 100);
    info_print("S10", "after holding 109");
    cycles("S10 cycles-with-109-held", 200);

    /* release the first 50 held and cycle again */
    for (int k = 0; k < 50; k++)
        if (shmctl(held[0], IPC_RMID, NULL) == -1)
            out("S10 release IPC_RMID = -1 %s", errname(errno));
        else
            held[0] = held[--nheld];
    info_print("S10", "after releasing 50");
    cycles("S10 cycles-with-59-held", 120);

    while (nheld > 0) {
        if (shmctl(held[nheld - 1], IPC_RMID, NULL) == -1)
            out("S10 cleanup IPC_RMID = -1 %s", errname(errno));
        nheld--;
    }
    info_print("S10", "all removed");
    cycles("S10 cycles-with-0-held", 10);
    return 0;
}
