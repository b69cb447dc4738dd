/* shmat_prot — S53 S54 S55 S113 S49
 * Protection of attaches: SHM_RDONLY maps r--s, writes fault, and
 * mprotect(PROT_WRITE) → EACCES; SHM_EXEC maps rwxs (r-xs with SHM_RDONLY)
 * and code runs there; a plain attach is not executable until mprotect adds
 * PROT_EXEC, which also works on a read-only attach.  (Root: mode bits are
 * not consulted, see perms for the unprivileged side.)
 */
#include "common.h"

int main(void)
{
    int id = T("setup", shmget(IPC_PRIVATE, 8192, 0600));
    char *w = A("setup", shmat(id, NULL, 0), NULL);
    if (w == FAILED) return 1;
    strcpy(w, "hello");
    put_ret42((unsigned char *)w + 4096);

    /* S53 */
    char *ro = A("S53", shmat(id, NULL, SHM_RDONLY), NULL);
    if (ro != FAILED) {
        out("S53 map %s", map_desc(ro));
        out("S53 read ro[0] = %s", probe_read(ro));
        out("S53 write ro[0] = %s", probe_write(ro, 'X'));
        out("S53 write ro[8191] = %s", probe_write(ro + 8191, 'X'));
        out("S53 w[0] still = %c", w[0]);
        T("S53", mprotect(ro, 8192, PROT_READ | PROT_WRITE));
        T("S53", mprotect(ro, 4096, PROT_WRITE));
        T("S53", mprotect(ro + 4096, 4096, PROT_READ | PROT_WRITE | PROT_EXEC));
        out("S53 map %s", map_desc(ro));
        /* S55: PROT_EXEC on a read-only attach */
        out("S55 exec ro+4096 before mprotect = %s", probe_exec(ro + 4096));
        T("S55", mprotect(ro, 8192, PROT_READ | PROT_EXEC));
        out("S55 map %s", map_desc(ro));
        out("S55 exec ro+4096 = %s", probe_exec(ro + 4096));
        T("S55", mprotect(ro, 8192, PROT_NONE));
        out("S55 read after PROT_NONE = %s", probe_read(ro));
        T("S55", mprotect(ro, 8192, PROT_READ));
        out("S55 read after PROT_READ = %s", probe_read(ro));
        print_nattch("S53", "", id);
        T("S53", shmdt(ro));
    }

    /* S54: SHM_EXEC */
    char *x = A("S54", shmat(id, NULL, SHM_EXEC), NULL);
    if (x != FAILED) {
        out("S54 map %s", map_desc(x));
        out("S54 exec x+4096 = %s", probe_exec(x + 4096));
        out("S54 write x[1] = %s", probe_write(x + 1, 'E'));
        out("S54 w[1] = %c", w[1]);
        T("S54", shmdt(x));
    }
    char *rx = A("S54", shmat(id, NULL, SHM_EXEC | SHM_RDONLY), NULL);
    if (rx != FAILED) {
        out("S54 map %s", map_desc(rx));
        out("S54 exec rx+4096 = %s", probe_exec(rx + 4096));
        out("S54 write rx[1] = %s", probe_write(rx + 1, 'Z'));
        T("S54", mprotect(rx, 4096, PROT_READ | PROT_WRITE));
        T("S54", shmdt(rx));
    }

    /* S55: a plain attach is not executable until mprotect */
    out("S55 map %s", map_desc(w));
    out("S55 exec w+4096 = %s", probe_exec(w + 4096));
    T("S55", mprotect(w + 4096, 4096, PROT_READ | PROT_WRITE | PROT_EXEC));
    out("S55 exec w+4096 = %s", probe_exec(w + 4096));
    T("S55", mprotect(w + 4096, 4096, PROT_READ | PROT_WRITE));

    /* S113: root attaches a mode-0000 segment in every way */
    int z = T("S113", shmget(IPC_PRIVATE, 4096, 0));
    char *z1 = A("S113", shmat(z, NULL, 0), NULL);
    char *z2 = A("S113", shmat(z, NULL, SHM_EXEC), NULL);
    char *z3 = A("S113", shmat(z, NULL, SHM_RDONLY), NULL);
    if (z1 != FAILED) out("S113 write z1 = %s", probe_write(z1, 1));
    if (z1 != FAILED) T("S113", shmdt(z1));
    if (z2 != FAILED) T("S113", shmdt(z2));
    if (z3 != FAILED) T("S113", shmdt(z3));
    T("cleanup", shmctl(z, IPC_RMID, NULL));

    T("cleanup", shmdt(w));
    T("cleanup", shmctl(id, IPC_RMID, NULL));
    return 0;
}
