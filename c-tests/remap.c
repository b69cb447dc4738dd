/* remap — S73 S75
 * remap_file_pages(2) over an attach: the kernel maps the segment anew over the
 * range, closing the old range first and then looking the segment up again. So
 * it works on a live segment (data kept, nattch as after a split), and over the
 * last attach of a segment marked for removal it destroys the segment, fails
 * with EINVAL and leaves the range unmapped. Called through syscall(2), as test
 * suites do, and through libc's wrapper.
 */
#include "common.h"

static int remap(void *addr, size_t size, size_t pgoff)
{
    errno = 0;
    return (int)syscall(SYS_remap_file_pages, addr, size, 0, pgoff, 0);
}

int main(void)
{
    /* a live segment: the whole attach, then one page of two */
    int id = T("setup", shmget(IPC_PRIVATE, 2 * PAGE, 0600));
    char *p = A("setup", shmat(id, NULL, 0), NULL);
    p[0] = 'a';
    p[PAGE] = 'b';
    int r = remap(p, 2 * PAGE, 0);
    out("S73 remap whole attach = %d %s", r, r ? errname(errno) : "");
    out("S73 data after remap: %c%c", p[0], p[PAGE]);
    show_nattch("S73 after remap of the whole attach", id);
    r = remap(p, PAGE, 0);
    out("S73 remap first page = %d %s", r, r ? errname(errno) : "");
    show_nattch("S73 after remap of one page", id);
    out("S73 data: %c%c", p[0], p[PAGE]);
    r = remap(p, PAGE, 1); /* page 1 of the segment now also at p */
    out("S73 remap page 1 over page 0 = %d %s", r, r ? errname(errno) : "");
    show_nattch("S73 after remap of page 1 over page 0", id);
    out("S73 data: %c%c", p[0], p[PAGE]);
    r = remap(p, PAGE, 2);
    out("S73 remap beyond the segment = %d %s", r, r ? errname(errno) : "");
    /* arguments the kernel refuses */
    r = (int)syscall(SYS_remap_file_pages, p, PAGE, PROT_READ, 0, 0);
    out("S73 remap with prot = %d %s", r, r ? errname(errno) : "");
    T("S73", shmdt(p));
    show_nattch("S73 after shmdt", id);

    /* marked for removal, but another attach keeps it */
    char *q = A("S75", shmat(id, NULL, 0), NULL);
    char *q2 = A("S75", shmat(id, NULL, 0), NULL);
    T("S75", shmctl(id, IPC_RMID, NULL));
    r = remap(q, 2 * PAGE, 0);
    out("S75 remap with another attach = %d %s", r, r ? errname(errno) : "");
    show_nattch("S75 after remap", id);
    T("S75", shmdt(q2));
    show_nattch("S75 one attach left", id);
    /* the last attach of a removed segment */
    errno = 0;
    r = remap_file_pages(q, 2 * PAGE, 0, 0, 0);
    out("S75 remap of the last attach = %d %s", r, r ? errname(errno) : "");
    show_nattch("S75 after remap of the last attach", id);
    out("S75 range after: %s", probe_read(q));
    errno = 0;
    r = shmdt(q);
    out("S75 shmdt after = %d %s", r, r ? errname(errno) : "");
    return 0;
}
