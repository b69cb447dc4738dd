/* fuzz — differential fuzzer for shmget/shmat/shmdt/shmctl.
 *
 *   fuzz SEED [NCALLS]
 *
 * From SEED, generates a random sequence of System V shm calls (plus a few
 * munmap/mprotect/fork/memory-probe steps that change what shm sees) and prints
 * one normalised line per call.  scripts/chaos runs it natively in a fresh IPC
 * namespace (`unshare --ipc`: the kernel is the oracle) and under the shim in
 * the seccomp sandbox, and requires byte-identical output.
 *
 * Normalisation (the output must not depend on anything but the call sequence):
 *   - ids are printed raw (both runs start in a fresh namespace, S8-S10);
 *   - errno values by name; addresses only as relations ("=requested",
 *     "=rounded", "aligned", ...); pids as self/child/0/other; times as 0/now;
 *   - shm_rss/shm_swp (SHM_INFO) are not printed.
 *
 * Address-space discipline (so that "free" and "occupied" mean the same thing
 * in both runs, whatever else the shim maps):
 *   - fixed addresses come from a private PROT_NONE reservation cut into
 *     2 GiB slots (1 GiB aligned); each slot is used once: a hole is punched
 *     right before the shmat and refilled if the call fails;
 *   - every range ever returned by shmat stays "ours": after any shmdt/munmap
 *     the gaps inside those ranges are refilled with PROT_NONE at once, so no
 *     later NULL attach (or shim-internal mapping) can land on an address the
 *     fuzzer may reuse;
 *   - SHM_REMAP is only used where the whole target range is ours.
 *
 * Known differences that are deliberately not exercised (SEMANTICS / README):
 * attach at address 0 (S61: SHM_RND with 0 < addr < SHMLBA without SHM_REMAP),
 * raw SYS_fork, sysctl writes (S19, S128-S135), SHM_HUGETLB without
 * SHM_NORESERVE (S46: needs a huge-page pool), touching hugetlb memory.
 *
 * FUZZ_SCAN=1 in the environment adds a listing of every segment after every
 * call (SHM_STAT_ANY, which changes nothing: S86), to find where two runs
 * first diverge.
 *
 * Seeds with SEED % 4 == 3 run unprivileged (uid/gid 4242, RLIMIT_MEMLOCK
 * 1 MiB) so that the permission paths (S112-S117, S82, S88, S107, S108) are
 * exercised; the others run as root.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef SHM_STAT_ANY
#define SHM_STAT_ANY 15
#endif
#ifndef SHM_NORESERVE
#define SHM_NORESERVE 010000
#endif
#ifndef SHM_HUGETLB
#define SHM_HUGETLB 04000
#endif
#ifndef SHM_EXEC
#define SHM_EXEC 0100000
#endif

#define PAGE 4096UL
#define FAILED ((void *)-1)
#define GIB (1UL << 30)
#define SLOT_SIZE (2 * GIB)
#define NSLOTS 96
#define UNPRIV_UID 4242
#define UNPRIV_GID 4242

/* ------------------------------------------------------------ output */

static int callno;

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static const char *en(int e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ERANGE: return "ERANGE";
    case EDEADLK: return "EDEADLK";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EIDRM: return "EIDRM";
    case ENOTSUP: return "ENOTSUP";
    default: {
        static char b[32];
        snprintf(b, sizeof b, "E#%d", e);
        return b;
    }
    }
}

static pid_t child_pid;

static const char *pidname(pid_t p)
{
    if (p == 0) return "0";
    if (p == getpid()) return "self";
    if (child_pid && p == child_pid) return "child";
    return "other";
}

static const char *tname(time_t t)
{
    static char b[4][32];
    static int k;
    char *s = b[k++ & 3];
    time_t now = time(NULL);
    if (t == 0) return "0";
    if (t >= now - 10 && t <= now + 10) return "now";
    snprintf(s, 32, "raw%lld", (long long)t);
    return s;
}

/* ------------------------------------------------------------ randomness */

static uint64_t rng;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rn(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(int percent) { return (int)rn(100) < percent; }

/* ------------------------------------------------------------ bookkeeping */

struct seg {
    int id;
    size_t segsz;
    int hshift; /* 0: normal pages; 21 / 30: hugetlb page size */
};

struct att {
    uintptr_t addr;
    size_t len;
    int id;
    int huge;
};

#define MAXSEG 1024
#define MAXATT 1024
static struct seg segs[MAXSEG];
static int nsegs;
static struct att atts[MAXATT];
static int natts;

static uintptr_t region; /* NSLOTS slots of SLOT_SIZE, 1 GiB aligned */
static int slot_next;
static char *nearend;   /* one rw page followed by a PROT_NONE page */
static char *ropage;    /* read-only page holding a shmid_ds for IPC_SET */
static char *nonepage;  /* PROT_NONE page */
static char *holeres;   /* 3 PROT_NONE pages; the middle one is unmapped during a call */
static char datapage[3 * PAGE] __attribute__((aligned(4096)));
static int unpriv;

static struct seg *find_seg(int id)
{
    for (int i = 0; i < nsegs; i++)
        if (segs[i].id == id) return &segs[i];
    return NULL;
}

static size_t round_up(size_t v, size_t a)
{
    if (v > SIZE_MAX - (a - 1)) return SIZE_MAX & ~(a - 1);
    return (v + a - 1) & ~(a - 1);
}

static size_t seg_maplen(const struct seg *s)
{
    size_t a = s->hshift ? (1UL << s->hshift) : PAGE;
    return round_up(s->segsz, a);
}

/* Is [lo, hi) inside one range that belongs to the fuzzer: the slot region or
 * a single range shmat returned?  (Unions of adjacent ranges are not counted:
 * whether two NULL attaches are adjacent depends on the address-space layout,
 * which differs between the native and the shim run.) */
static int owned(uintptr_t lo, uintptr_t hi)
{
    if (hi <= lo) return 0;
    if (lo >= region && hi <= region + (uintptr_t)NSLOTS * SLOT_SIZE) return 1;
    for (int i = 0; i < natts; i++)
        if (lo >= atts[i].addr && hi <= atts[i].addr + atts[i].len) return 1;
    return 0;
}

/* Fill every unmapped gap inside [lo, hi) with PROT_NONE, never replacing anything. */
static void fill_gaps(uintptr_t lo, uintptr_t hi)
{
    if (hi <= lo) return;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) {
        fprintf(stderr, "fuzz: cannot read /proc/self/maps\n");
        exit(99);
    }
    static uintptr_t ms[65536][2];
    int n = 0;
    char line[512];
    while (fgets(line, sizeof line, f) && n < 65536) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2) {
            ms[n][0] = a;
            ms[n][1] = b;
            n++;
        }
    }
    fclose(f);
    uintptr_t cur = lo;
    for (int i = 0; i < n && cur < hi; i++) {
        if (ms[i][1] <= cur) continue;
        if (ms[i][0] >= hi) break;
        if (ms[i][0] > cur)
            mmap((void *)cur, ms[i][0] - cur, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (ms[i][1] > cur) cur = ms[i][1];
    }
    if (cur < hi)
        mmap((void *)cur, hi - cur, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
}

static void fill_all_atts(void)
{
    /* one pass over the maps per range is cheap enough for a few hundred ranges */
    for (int i = 0; i < natts; i++)
        fill_gaps(atts[i].addr, atts[i].addr + atts[i].len);
}

static int intersects_att(uintptr_t lo, uintptr_t hi)
{
    for (int i = 0; i < natts; i++)
        if (atts[i].addr < hi && atts[i].addr + atts[i].len > lo) return 1;
    return 0;
}

/* A fresh, never used slot (that no REMAP has touched), or 0. */
static uintptr_t fresh_slot(void)
{
    while (slot_next < NSLOTS) {
        uintptr_t b = region + (uintptr_t)slot_next * SLOT_SIZE;
        slot_next++;
        if (!intersects_att(b, b + SLOT_SIZE)) return b;
    }
    return 0;
}

/* ------------------------------------------------------------ fault probes */

static sigjmp_buf probe_env;
static volatile sig_atomic_t probe_sig;

static void probe_handler(int sig)
{
    probe_sig = sig;
    siglongjmp(probe_env, 1);
}

static void probe_on(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = probe_handler;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

static void probe_off(void)
{
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
}

static const char *sig_result(void)
{
    return probe_sig == SIGSEGV ? "SIGSEGV" : probe_sig == SIGBUS ? "SIGBUS" : "SIG?";
}

static const char *probe_read(volatile unsigned char *p)
{
    static char b[16];
    probe_on();
    probe_sig = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        unsigned v = *p;
        probe_off();
        snprintf(b, sizeof b, "ok:%02x", v);
        return b;
    }
    probe_off();
    return sig_result();
}

static const char *probe_write(volatile unsigned char *p, unsigned char v)
{
    probe_on();
    probe_sig = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        *p = v;
        probe_off();
        return "ok";
    }
    probe_off();
    return sig_result();
}

/* ------------------------------------------------------------ printing structs */

static void print_ds(char *line, size_t n, const struct shmid_ds *d)
{
    snprintf(line, n,
             " {key=%d uid=%u gid=%u cuid=%u cgid=%u mode=%04o seq=%u pad2=%u res1=%lx res2=%lx"
             " segsz=%zu atime=%s dtime=%s ctime=%s cpid=%s lpid=%s nattch=%lu res5=%lx res6=%lx}",
             d->shm_perm.__key, d->shm_perm.uid, d->shm_perm.gid, d->shm_perm.cuid,
             d->shm_perm.cgid, d->shm_perm.mode, d->shm_perm.__seq, d->shm_perm.__pad2,
             (unsigned long)d->shm_perm.__glibc_reserved1,
             (unsigned long)d->shm_perm.__glibc_reserved2, d->shm_segsz, tname(d->shm_atime),
             tname(d->shm_dtime), tname(d->shm_ctime), pidname(d->shm_cpid),
             pidname(d->shm_lpid), (unsigned long)d->shm_nattch,
             (unsigned long)d->__glibc_reserved5, (unsigned long)d->__glibc_reserved6);
}

/* ------------------------------------------------------------ shmget */

static const int key_pool[] = {IPC_PRIVATE, -1, (int)0x80000001, 1, 0x1234, 0x7fffffff};

static size_t pick_size(void)
{
    static const size_t small[] = {1, 100, 4095, 4096, 4097, 8192, 12288, 65536, 1UL << 20};
    static const size_t big[] = {
        0, 1UL << 30, 1UL << 40, 1UL << 50, (1UL << 63) - 1, 1UL << 63,
        SIZE_MAX - 4095, SIZE_MAX - (1UL << 24), SIZE_MAX - (1UL << 24) + 1, SIZE_MAX,
    };
    if (chance(80)) return small[rn(sizeof small / sizeof small[0])];
    return big[rn(sizeof big / sizeof big[0])];
}

static int pick_mode(void)
{
    static const int modes[] = {0600, 0666, 0644, 0400, 0200, 0000, 0700, 0060, 0006, 0777};
    if (chance(15)) return (int)rn(01000);
    return modes[rn(sizeof modes / sizeof modes[0])];
}

static void op_shmget(void)
{
    int key = chance(25) ? IPC_PRIVATE : key_pool[rn(sizeof key_pool / sizeof key_pool[0])];
    size_t size = pick_size();
    int flg = pick_mode();
    int hshift = 0;
    if (chance(70)) flg |= IPC_CREAT;
    if (chance(25)) flg |= IPC_EXCL;
    if (chance(15)) flg |= SHM_NORESERVE;
    if (chance(10)) {
        static const int undef[] = {0x40000000, 0x100000, (int)0x80000000, 0x20000, 0x1000000};
        flg |= undef[rn(sizeof undef / sizeof undef[0])];
    }
    if (chance(5)) {
        /* S45-S47: only with SHM_NORESERVE (no huge-page pool here) */
        static const int codes[] = {0, 21, 30, 13};
        int c = codes[rn(4)];
        flg |= SHM_HUGETLB | SHM_NORESERVE | (c << 26);
        hshift = c == 30 ? 30 : 21;
    }
    errno = 0;
    int r = shmget(key, size, flg);
    int e = errno;
    if (r == -1) {
        out("%d shmget(key=%d, size=%zu, flg=%#x) = -1 %s", callno, key, size, (unsigned)flg, en(e));
        return;
    }
    const char *what = "found";
    if (!find_seg(r) && nsegs < MAXSEG) {
        segs[nsegs].id = r;
        segs[nsegs].segsz = size;
        segs[nsegs].hshift = (flg & SHM_HUGETLB) ? hshift : 0;
        nsegs++;
        what = "new";
    }
    out("%d shmget(key=%d, size=%zu, flg=%#x) = %d (%s)", callno, key, size, (unsigned)flg, r, what);
}

/* ------------------------------------------------------------ ids */

static int pick_id(void)
{
    int k = (int)rn(100);
    if (nsegs > 0 && k < 70) return segs[rn(nsegs)].id;
    if (nsegs > 0 && k < 80) return segs[rn(nsegs)].id + 32768 * (int)(1 + rn(5));
    if (k < 85) return -1 - (int)rn(3) * 1000;
    if (k < 88) return INT32_MIN;
    if (k < 95) return (int)rn(100);
    return (int)(rnd() & 0x7fffffff);
}

/* ------------------------------------------------------------ shmat */

static void op_shmat(void)
{
    int id = pick_id();
    struct seg *s = find_seg(id);
    size_t len = s ? seg_maplen(s) : PAGE;
    int flg = 0;
    if (chance(30)) flg |= SHM_RDONLY;
    if (chance(15)) flg |= SHM_EXEC;
    if (chance(4)) flg |= 0x1000000; /* undefined: ignored (S62) */
    uintptr_t addr = 0, slot = 0, hole_lo = 0, hole_hi = 0;
    const char *kind;
    int k = (int)rn(100);
    if (k < 30) {
        kind = "NULL";
        if (chance(10)) flg |= SHM_RND;   /* ignored with NULL (S62) */
        if (chance(5)) flg |= SHM_REMAP;  /* EINVAL (S60) */
    } else if (k < 52 && (slot = fresh_slot())) {
        /* free, page aligned (S56); offsets keep 1 GiB / 2 MiB / 4 KiB alignment classes */
        static const uintptr_t offs[] = {0, 2UL << 20, 7 * PAGE};
        uintptr_t off = offs[rn(3)];
        hole_lo = slot + off;
        hole_hi = hole_lo + (len > GIB ? GIB : len);
        if (chance(60)) {
            kind = "free";
            addr = hole_lo;
            if (chance(15)) flg |= SHM_RND;
            if (chance(15)) flg |= SHM_REMAP;
        } else {
            kind = "free+unaligned"; /* S57 */
            addr = hole_lo + 1 + rn(PAGE - 1);
            if (chance(70)) flg |= SHM_RND;
            if (chance(10)) flg |= SHM_REMAP;
        }
    } else if (k < 60 && (slot = fresh_slot())) {
        kind = "reserved"; /* PROT_NONE of ours: occupied (S58) or replaced (S59) */
        addr = slot + (chance(20) ? 1 + rn(PAGE - 1) : 0);
        if (chance(40)) flg |= SHM_REMAP;
        if (addr % PAGE && chance(60)) flg |= SHM_RND;
    } else if (k < 78 && natts > 0) {
        struct att *a = &atts[rn(natts)];
        kind = "attach";
        addr = a->addr;
        /* inside the attach's own range only: what lies beyond depends on the
         * address-space layout */
        if (a->len > PAGE && chance(20)) addr += PAGE * (1 + rn(a->len / PAGE - 1 < 3 ? a->len / PAGE - 1 : 3));
        if (chance(10)) addr += 1 + rn(PAGE - 1);
        if (chance(35)) flg |= SHM_REMAP;
        if (addr % PAGE && chance(60)) flg |= SHM_RND;
    } else if (k < 84) {
        kind = "data"; /* occupied by the program's own data (S58) */
        addr = (uintptr_t)datapage + PAGE;
        if (chance(20)) addr += 5;
        if (addr % PAGE && chance(50)) flg |= SHM_RND;
    } else if (k < 90) {
        kind = "high"; /* beyond user space (S63) */
        addr = chance(50) ? 0x7ffffffff000UL : 0x800000000000UL;
        if (chance(30)) flg |= SHM_REMAP;
    } else if (k < 94) {
        kind = "wrap"; /* address + size wraps (S63) */
        addr = (uintptr_t)0 - 16 * PAGE;
        if (chance(30)) flg |= SHM_REMAP;
    } else {
        static const uintptr_t lows[] = {0x123, 0x10000, 0x1000, 0x10123};
        kind = "low";
        addr = lows[rn(4)];
        if (chance(50)) flg |= SHM_RND;
        if (chance(20)) flg |= SHM_REMAP;
    }
    uintptr_t ea = (flg & SHM_RND) ? addr & ~(PAGE - 1) : addr;
    /* S61 is a known difference: never let SHM_RND round a non-NULL address to 0
     * without SHM_REMAP. */
    if (addr && ea == 0 && !(flg & SHM_REMAP)) {
        flg &= ~SHM_RND;
        ea = addr;
    }
    /* SHM_REMAP may only clobber ranges that are ours (high/wrap fail anyway). */
    if ((flg & SHM_REMAP) && ea && strcmp(kind, "high") && strcmp(kind, "wrap")) {
        int ok = s && ea % PAGE == 0 && len <= GIB && owned(ea, ea + len);
        if (!ok) flg &= ~SHM_REMAP;
    }
    if (hole_hi) munmap((void *)hole_lo, hole_hi - hole_lo);
    errno = 0;
    void *r = shmat(id, (void *)addr, flg);
    int e = errno;
    char res[64];
    if (r == FAILED) {
        snprintf(res, sizeof res, "-1 %s", en(e));
    } else if (addr && (uintptr_t)r == addr) {
        snprintf(res, sizeof res, "=requested");
    } else if (addr && (uintptr_t)r == ea) {
        snprintf(res, sizeof res, "=rounded");
    } else if (r == NULL) {
        snprintf(res, sizeof res, "NULL");
    } else if (!addr) {
        const char *al = (uintptr_t)r % PAGE ? "unaligned" : "aligned";
        if (s && s->hshift && (uintptr_t)r % (1UL << s->hshift) == 0)
            al = s->hshift == 30 ? "aligned1G" : "aligned2M";
        snprintf(res, sizeof res, "%s", al);
    } else {
        snprintf(res, sizeof res, "elsewhere");
    }
    out("%d shmat(id=%d, addr=%s, flg=%#o) = %s", callno, id, kind, (unsigned)flg, res);
    if (r != FAILED && natts < MAXATT) {
        atts[natts].addr = (uintptr_t)r;
        atts[natts].len = s ? seg_maplen(s) : PAGE;
        atts[natts].id = id;
        atts[natts].huge = s ? s->hshift != 0 : 0;
        natts++;
    }
    if (slot) fill_gaps(slot, slot + SLOT_SIZE);
}

/* ------------------------------------------------------------ shmdt */

static void op_shmdt(void)
{
    uintptr_t addr;
    const char *kind;
    int hole = 0, i = 0;
    int k = (int)rn(100);
    if (k < 55 && natts > 0) {
        kind = "attach";
        addr = atts[rn(natts)].addr;
    } else if (k < 68 && natts > 0 && atts[i = (int)rn(natts)].len > PAGE) {
        /* S70, S71.  Only inside the attach's own range: the kernel accepts any
         * address from which some shm fragment above lies exactly its page
         * offset away, so an address beyond the range could hit a neighbouring
         * attach whose position depends on the address-space layout. */
        kind = "attach+pages";
        size_t np = atts[i].len / PAGE - 1;
        addr = atts[i].addr + PAGE * (1 + rn(np < 3 ? np : 3));
    } else if (k < 73 && natts > 0) {
        kind = "attach+unaligned";
        addr = atts[rn(natts)].addr + 1 + rn(PAGE - 1);
    } else if (k < 80) {
        kind = "NULL";
        addr = 0;
    } else if (k < 86) {
        kind = "reserved";
        addr = (uintptr_t)nonepage;
    } else if (k < 93) {
        kind = "unmapped";
        addr = (uintptr_t)holeres + PAGE;
        hole = 1;
    } else {
        kind = "data";
        addr = (uintptr_t)datapage + PAGE;
    }
    if (hole) munmap((void *)addr, PAGE);
    errno = 0;
    int r = shmdt((void *)addr);
    int e = errno;
    if (hole) fill_gaps(addr, addr + PAGE);
    if (r == -1)
        out("%d shmdt(%s) = -1 %s", callno, kind, en(e));
    else
        out("%d shmdt(%s) = %d", callno, kind, r);
    if (r == 0) fill_all_atts();
}

/* ------------------------------------------------------------ munmap / mprotect */

static void op_vma(void)
{
    if (natts == 0) return;
    struct att *a = &atts[rn(natts)];
    if (a->huge) return; /* sub-huge-page changes: not emulated, not interesting */
    size_t pages = a->len / PAGE;
    if (pages > 8) pages = 8;
    uintptr_t p = a->addr + PAGE * rn(pages);
    int r, e;
    const char *what;
    switch (rn(4)) {
    case 0:
        what = "munmap";
        errno = 0;
        r = munmap((void *)p, PAGE);
        e = errno;
        fill_gaps(p, p + PAGE);
        break;
    case 1:
        what = "mprotect(R)";
        errno = 0;
        r = mprotect((void *)p, PAGE, PROT_READ);
        e = errno;
        break;
    case 2:
        what = "mprotect(RW)"; /* EACCES on a SHM_RDONLY attach (S53) */
        errno = 0;
        r = mprotect((void *)p, PAGE, PROT_READ | PROT_WRITE);
        e = errno;
        break;
    default:
        what = "mprotect(NONE)";
        errno = 0;
        r = mprotect((void *)p, PAGE, PROT_NONE);
        e = errno;
        break;
    }
    if (r == -1)
        out("%d %s(attach+%lu pages) = -1 %s", callno, what, (unsigned long)((p - a->addr) / PAGE), en(e));
    else
        out("%d %s(attach+%lu pages) = %d", callno, what, (unsigned long)((p - a->addr) / PAGE), r);
}

/* ------------------------------------------------------------ memory probes */

static int pick_probe_att(void)
{
    for (int tries = 0; tries < 8 && natts > 0; tries++) {
        int i = (int)rn(natts);
        if (!atts[i].huge) return i;
    }
    return -1;
}

static void op_probe(void)
{
    int i = pick_probe_att();
    if (i < 0) return;
    struct att *a = &atts[i];
    size_t off;
    switch (rn(4)) {
    case 0: off = 0; break;
    case 1: off = a->len - 1; break;
    case 2: off = rn(a->len < 16 * PAGE ? a->len : 16 * PAGE); break;
    default: off = 1 + rn(64); break;
    }
    if (off >= a->len) off = 0;
    volatile unsigned char *p = (volatile unsigned char *)(a->addr + off);
    char rd[16];
    snprintf(rd, sizeof rd, "%s", probe_read(p));
    if (chance(50)) {
        unsigned char v = (unsigned char)rnd();
        const char *w = probe_write(p, v);
        out("%d probe(att#%d+%zu) read=%s write(%02x)=%s", callno, i, off, rd, v, w);
    } else {
        out("%d probe(att#%d+%zu) read=%s", callno, i, off, rd);
    }
}

/* ------------------------------------------------------------ shmctl */

enum bufkind { B_VALID, B_NULL, B_UNMAPPED, B_NONE, B_RO, B_NEAR, B_KERNEL, B_UNALIGNED };
static const char *bufname[] = {"valid", "NULL", "unmapped", "protnone", "readonly", "nearend", "kernel", "unaligned"};

static void fill_set_buf(struct shmid_ds *d)
{
    static const unsigned uids_root[] = {0, 1001, 65534, (unsigned)-1};
    static const unsigned uids_unpriv[] = {UNPRIV_UID, 1001, 0, (unsigned)-1};
    static const unsigned gids[] = {0, 2001, UNPRIV_GID, (unsigned)-1};
    memset(d, 0, sizeof *d);
    const unsigned *u = unpriv ? uids_unpriv : uids_root;
    d->shm_perm.uid = chance(60) ? u[0] : u[rn(4)];
    d->shm_perm.gid = chance(60) ? gids[unpriv ? 2 : 0] : gids[rn(4)];
    d->shm_perm.mode = chance(70) ? (unsigned)pick_mode() : (unsigned)rn(010000);
    /* everything else must be ignored (S87) */
    d->shm_perm.__key = (int)rnd();
    d->shm_perm.cuid = 77;
    d->shm_perm.cgid = 78;
    d->shm_segsz = rnd();
    d->shm_nattch = 99;
    d->shm_cpid = 1;
    d->shm_atime = 12345;
}

static void op_shmctl(void)
{
    static const int invalid[] = {4, 5, 10, 16, 99, 0x102, 0x100, -1, 0x10d};
    int cmd, k = (int)rn(100);
    if (k < 12) cmd = IPC_RMID;
    else if (k < 22) cmd = IPC_SET;
    else if (k < 42) cmd = IPC_STAT;
    else if (k < 48) cmd = IPC_INFO;
    else if (k < 54) cmd = SHM_LOCK;
    else if (k < 59) cmd = SHM_UNLOCK;
    else if (k < 70) cmd = SHM_STAT;
    else if (k < 76) cmd = SHM_INFO;
    else if (k < 88) cmd = SHM_STAT_ANY;
    else cmd = invalid[rn(sizeof invalid / sizeof invalid[0])];

    int id;
    if ((cmd == SHM_STAT || cmd == SHM_STAT_ANY) && chance(55))
        id = (int)rn(70) + (chance(20) ? 32768 * (int)rn(4) : 0); /* S102: an index */
    else if ((cmd == IPC_INFO || cmd == SHM_INFO) && chance(60))
        id = chance(70) ? 0 : (int)rn(100000); /* S100 */
    else
        id = pick_id();

    /* buffers */
    static struct {
        struct shmid_ds ds;
        char pad[256];
    } vb;
    size_t need = cmd == IPC_INFO ? sizeof(struct shminfo)
                  : cmd == SHM_INFO ? sizeof(struct shm_info)
                                    : sizeof(struct shmid_ds);
    int bk;
    k = (int)rn(100);
    if (k < 55) bk = B_VALID;
    else if (k < 64) bk = B_NULL;
    else if (k < 70) bk = B_UNMAPPED;
    else if (k < 75) bk = B_NONE;
    else if (k < 83) bk = B_RO;
    else if (k < 94) bk = B_NEAR;
    else if (k < 97) bk = B_KERNEL;
    else bk = B_UNALIGNED;

    char *buf = NULL;
    size_t room = 0; /* readable/writable bytes at buf (for printing) */
    size_t nearoff = 0;
    struct shmid_ds setv;
    if (cmd == IPC_SET) fill_set_buf(&setv);
    switch (bk) {
    case B_VALID:
        buf = (char *)&vb.ds;
        room = sizeof vb;
        break;
    case B_UNALIGNED:
        buf = (char *)&vb.ds + 3;
        room = sizeof vb - 3;
        break;
    case B_NULL: break;
    case B_UNMAPPED:
        buf = holeres + PAGE;
        munmap(buf, PAGE);
        break;
    case B_NONE: buf = nonepage; break;
    case B_RO:
        buf = ropage;
        room = PAGE;
        break;
    case B_NEAR: {
        static const size_t offs[] = {112, 72, 48, 50, 8, 1, 111, 71, 47};
        nearoff = offs[rn(sizeof offs / sizeof offs[0])];
        buf = nearend + PAGE - nearoff;
        room = nearoff;
        break;
    }
    case B_KERNEL: buf = (char *)0xffff888000000000UL; break;
    }
    if (room && bk != B_RO) {
        memset(buf, 0xA5, room < sizeof(struct shmid_ds) + 64 ? room : sizeof(struct shmid_ds) + 64);
        if (cmd == IPC_SET) memcpy(buf, &setv, room < sizeof setv ? room : sizeof setv);
    }

    errno = 0;
    int r = shmctl(id, cmd, (struct shmid_ds *)buf);
    int e = errno;
    if (bk == B_UNMAPPED) fill_gaps((uintptr_t)buf, (uintptr_t)buf + PAGE);

    char bdesc[32];
    if (bk == B_NEAR) snprintf(bdesc, sizeof bdesc, "nearend-%zu", nearoff);
    else snprintf(bdesc, sizeof bdesc, "%s", bufname[bk]);
    char setdesc[96] = "";
    if (cmd == IPC_SET)
        snprintf(setdesc, sizeof setdesc, "[uid=%d gid=%d mode=%05o]", (int)setv.shm_perm.uid,
                 (int)setv.shm_perm.gid, setv.shm_perm.mode);
    if (bk == B_RO && cmd == IPC_SET) {
        struct shmid_ds *d = (struct shmid_ds *)ropage;
        snprintf(setdesc, sizeof setdesc, "[uid=%d gid=%d mode=%05o]", (int)d->shm_perm.uid,
                 (int)d->shm_perm.gid, d->shm_perm.mode);
    }
    if (r == -1) {
        out("%d shmctl(%d, %d, %s%s) = -1 %s", callno, id, cmd, bdesc, setdesc, en(e));
        return;
    }
    char extra[600] = "";
    if (room >= need && buf) {
        if (cmd == IPC_STAT || cmd == SHM_STAT || cmd == SHM_STAT_ANY) {
            struct shmid_ds d;
            memcpy(&d, buf, sizeof d);
            print_ds(extra, sizeof extra, &d);
        } else if (cmd == IPC_INFO) {
            struct shminfo si;
            memcpy(&si, buf, sizeof si);
            unsigned long *w = (unsigned long *)&si;
            snprintf(extra, sizeof extra,
                     " {shmmax=%lu shmmin=%lu shmmni=%lu shmseg=%lu shmall=%lu unused=%lx,%lx,%lx,%lx}",
                     w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]);
        } else if (cmd == SHM_INFO) {
            struct shm_info si;
            memcpy(&si, buf, sizeof si);
            snprintf(extra, sizeof extra, " {used_ids=%d shm_tot=%lu swap_attempts=%lu swap_successes=%lu}",
                     si.used_ids, si.shm_tot, si.swap_attempts, si.swap_successes);
        }
    } else if (buf && (cmd == IPC_STAT || cmd == SHM_STAT || cmd == SHM_STAT_ANY ||
                       cmd == IPC_INFO || cmd == SHM_INFO)) {
        snprintf(extra, sizeof extra, " {buffer too small to print}");
    }
    out("%d shmctl(%d, %d, %s%s) = %d%s", callno, id, cmd, bdesc, setdesc, r, extra);
}

/* ------------------------------------------------------------ fork */

/* Every segment of the namespace: index, id, nattch, mode, key, lpid. */
static void scan(const char *who)
{
    struct shminfo si;
    int max = shmctl(0, IPC_INFO, (struct shmid_ds *)&si);
    if (max < 0) {
        out("%d   %s scan: IPC_INFO = -1 %s", callno, who, en(errno));
        return;
    }
    for (int i = 0; i <= max; i++) {
        struct shmid_ds d;
        int id = shmctl(i, SHM_STAT_ANY, &d);
        if (id < 0) continue;
        out("%d   %s scan: idx=%d id=%d nattch=%lu mode=%04o key=%d lpid=%s atime=%s dtime=%s",
            callno, who, i, id, (unsigned long)d.shm_nattch, d.shm_perm.mode, d.shm_perm.__key,
            pidname(d.shm_lpid), tname(d.shm_atime), tname(d.shm_dtime));
    }
}

static void op_fork(void)
{
    /* the child's choices are drawn here so that parent and child stay in step */
    int ai = pick_probe_att();
    int do_dt = chance(40);
    int dti = natts ? (int)rn(natts) : -1;
    unsigned char v = (unsigned char)rnd();
    out("%d fork", callno);
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) {
        out("%d fork = -1 %s", callno, en(errno));
        return;
    }
    if (p == 0) {
        child_pid = 0;
        scan("child");
        if (ai >= 0)
            out("%d   child write(att#%d+200,%02x)=%s", callno, ai, v,
                probe_write((volatile unsigned char *)(atts[ai].addr + 200), v));
        if (do_dt && dti >= 0) {
            errno = 0;
            int r = shmdt((void *)atts[dti].addr);
            out("%d   child shmdt(att#%d) = %d %s", callno, dti, r, r ? en(errno) : "");
        }
        fflush(stdout);
        _exit(0);
    }
    child_pid = p;
    int st;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
    }
    out("%d   child exit=%d", callno, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    if (ai >= 0)
        out("%d   parent read(att#%d+200)=%s", callno, ai,
            probe_read((volatile unsigned char *)(atts[ai].addr + 200)));
    scan("parent");
}

/* ------------------------------------------------------------ main */

static void *must_mmap(void *a, size_t len, int prot, int flags)
{
    void *p = mmap(a, len, prot, flags | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "fuzz: mmap %zu: %s\n", len, strerror(errno));
        exit(99);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SEED [NCALLS]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long seed = strtoul(argv[1], NULL, 0);
    int ncalls = argc > 2 ? atoi(argv[2]) : 300;
    rng = seed * 0x2545F4914F6CDD1DULL + 1;
    unpriv = seed % 4 == 3;
    /* FUZZ_SCAN=1: list every segment after every call (to locate a divergence) */
    int verbose = getenv("FUZZ_SCAN") && *getenv("FUZZ_SCAN") == '1';

    if (unpriv) {
        struct rlimit rl = {1 << 20, 1 << 20};
        if (setrlimit(RLIMIT_MEMLOCK, &rl) || setgroups(0, NULL) ||
            setresgid(UNPRIV_GID, UNPRIV_GID, UNPRIV_GID) ||
            setresuid(UNPRIV_UID, UNPRIV_UID, UNPRIV_UID)) {
            fprintf(stderr, "fuzz: cannot drop privileges: %s\n", strerror(errno));
            return 99;
        }
        prctl(PR_SET_DUMPABLE, 1);
    }
    out("fuzz seed=%lu calls=%d %s", seed, ncalls, unpriv ? "unprivileged" : "root");

    /* S99/S101 on an empty namespace; also brings the shim up before the
     * address-space reservations below. */
    {
        struct shm_info si;
        int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
        out("0 shmctl(0, SHM_INFO) = %d used_ids=%d shm_tot=%lu", r, r < 0 ? -1 : si.used_ids,
            r < 0 ? 0 : si.shm_tot);
    }

    uintptr_t raw = (uintptr_t)must_mmap(NULL, (NSLOTS + 1) * SLOT_SIZE, PROT_NONE, MAP_NORESERVE);
    region = (raw + GIB - 1) & ~(GIB - 1);
    nearend = must_mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, 0);
    mprotect(nearend + PAGE, PAGE, PROT_NONE);
    ropage = must_mmap(NULL, PAGE, PROT_READ | PROT_WRITE, 0);
    {
        struct shmid_ds *d = (struct shmid_ds *)ropage;
        d->shm_perm.uid = unpriv ? UNPRIV_UID : 0;
        d->shm_perm.gid = unpriv ? UNPRIV_GID : 0;
        d->shm_perm.mode = 0640;
        mprotect(ropage, PAGE, PROT_READ);
    }
    nonepage = must_mmap(NULL, PAGE, PROT_NONE, 0);
    holeres = must_mmap(NULL, 3 * PAGE, PROT_NONE, 0);

    for (callno = 1; callno <= ncalls; callno++) {
        int k = (int)rn(1000);
        if (k < 240) op_shmget();
        else if (k < 460) op_shmat();
        else if (k < 580) op_shmdt();
        else if (k < 860) op_shmctl();
        else if (k < 920) op_probe();
        else if (k < 965) op_vma();
        else if (k < 985) op_fork();
        else op_shmctl();
        if (verbose) scan("state");
    }

    /* Remove everything: detach, unmap every range we attached, remove all. */
    for (int i = 0; i < natts; i++) shmdt((void *)atts[i].addr);
    for (int i = 0; i < natts; i++) munmap((void *)atts[i].addr, atts[i].len);
    scan("final");
    struct shminfo si;
    int max = shmctl(0, IPC_INFO, (struct shmid_ds *)&si);
    for (int i = 0; i <= max; i++) {
        struct shmid_ds d;
        int id = shmctl(i, SHM_STAT_ANY, &d);
        if (id >= 0 && shmctl(id, IPC_RMID, NULL) != 0)
            out("final IPC_RMID(%d) = -1 %s", id, en(errno));
    }
    struct shm_info sinfo;
    int r = shmctl(0, SHM_INFO, (struct shmid_ds *)&sinfo);
    out("end SHM_INFO = %d used_ids=%d shm_tot=%lu", r, r < 0 ? -1 : sinfo.used_ids,
        r < 0 ? 0 : sinfo.shm_tot);
    return 0;
}
