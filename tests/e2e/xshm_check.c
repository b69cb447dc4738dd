/* xshm_check — an MIT-SHM client for tests/e2e/x11_mitshm.sh.
 *
 *   xshm_check DISPLAY
 *
 * 1. XShmQueryExtension / XShmQueryVersion: the extension is there, version >= 1.1,
 *    shared pixmaps supported in ZPixmap format.
 * 2. Image A: an IPC_PRIVATE segment (shmget + shmat), XShmAttach — the X server
 *    attaches the client's segment by id (shmat + IPC_STAT permission check) —
 *    then IPC_STAT must show nattch == 2 (client + server) and IPC_RMID; after
 *    it, IPC_STAT shows SHM_DEST and the memory stays usable.
 * 3. A known pattern is drawn into A, XShmPutImage copies it to a pixmap, and
 *    XShmGetImage reads the pixmap back into image B (second segment, likewise
 *    attached by the server); B must equal the pattern pixel for pixel.
 * 4. A shared pixmap (XShmCreatePixmap) on A's memory: the server fills a
 *    rectangle of it, and the client must see the fill in its own mapping of A
 *    (the server writes the very memory the client has attached).
 * Prints a checksum of what came back; exit 0 iff every check held.
 */
#include <X11/Xlib.h>
#include <X11/Xutil.h>
#include <X11/extensions/XShm.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#define W 257
#define H 131

static int x_error;
static int on_error(Display *d, XErrorEvent *e)
{
    char msg[256];
    XGetErrorText(d, e->error_code, msg, sizeof msg);
    fprintf(stderr, "X error: %s (request %d.%d)\n", msg, e->request_code, e->minor_code);
    x_error = 1;
    return 0;
}

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            printf("ok: " __VA_ARGS__);                                                            \
        } else {                                                                                   \
            printf("CHECK FAILED: " __VA_ARGS__);                                                  \
            failures++;                                                                            \
        }                                                                                          \
        putchar('\n');                                                                             \
    } while (0)

static unsigned long pattern(int x, int y)
{
    unsigned r = (x * 7 + y * 3) & 0xff, g = (x ^ y) & 0xff, b = (x * y + 17) & 0xff;
    return (r << 16) | (g << 8) | b;
}

/* an XShm image in a fresh IPC_PRIVATE segment, attached here and by the server */
static XImage *shm_image(Display *dpy, Visual *vis, int depth, XShmSegmentInfo *si, const char *name)
{
    XImage *img = XShmCreateImage(dpy, vis, depth, ZPixmap, NULL, si, W, H);
    if (!img) {
        printf("CHECK FAILED: XShmCreateImage %s\n", name);
        exit(1);
    }
    si->shmid = shmget(IPC_PRIVATE, (size_t)img->bytes_per_line * img->height, IPC_CREAT | 0600);
    if (si->shmid < 0) {
        printf("CHECK FAILED: shmget %s: %s\n", name, strerror(errno));
        exit(1);
    }
    si->shmaddr = img->data = shmat(si->shmid, NULL, 0);
    if (si->shmaddr == (char *)-1) {
        printf("CHECK FAILED: shmat %s: %s\n", name, strerror(errno));
        shmctl(si->shmid, IPC_RMID, NULL);
        exit(1);
    }
    si->readOnly = False;
    x_error = 0;
    Status st = XShmAttach(dpy, si);
    XSync(dpy, False);
    CHECK(st && !x_error, "XShmAttach %s (shmid %d)", name, si->shmid);

    struct shmid_ds ds;
    int r = shmctl(si->shmid, IPC_STAT, &ds);
    CHECK(r == 0 && ds.shm_nattch == 2, "%s nattch after XShmAttach = %lu (client + X server)", name,
          r == 0 ? (unsigned long)ds.shm_nattch : 0UL);
    /* remove now: the segment lives on while the client and the server have it attached */
    r = shmctl(si->shmid, IPC_RMID, NULL);
    CHECK(r == 0, "IPC_RMID %s", name);
    r = shmctl(si->shmid, IPC_STAT, &ds);
    CHECK(r == 0 && (ds.shm_perm.mode & SHM_DEST) && ds.shm_nattch == 2,
          "%s after IPC_RMID: SHM_DEST=%d nattch=%lu", name, r == 0 && (ds.shm_perm.mode & SHM_DEST) ? 1 : 0,
          r == 0 ? (unsigned long)ds.shm_nattch : 0UL);
    return img;
}

int main(int argc, char **argv)
{
    XSetErrorHandler(on_error);
    Display *dpy = XOpenDisplay(argc > 1 ? argv[1] : NULL);
    if (!dpy) {
        printf("CHECK FAILED: cannot open display %s\n", argc > 1 ? argv[1] : "(default)");
        return 1;
    }
    int scr = DefaultScreen(dpy);
    Visual *vis = DefaultVisual(dpy, scr);
    int depth = DefaultDepth(dpy, scr);
    Window root = RootWindow(dpy, scr);
    printf("display depth %d\n", depth);
    if (depth != 24) {
        printf("CHECK FAILED: need a 24-bit screen\n");
        return 1;
    }

    /* 1. the extension */
    int major = 0, minor = 0;
    Bool pixmaps = False;
    CHECK(XShmQueryExtension(dpy), "XShmQueryExtension");
    Status st = XShmQueryVersion(dpy, &major, &minor, &pixmaps);
    CHECK(st && (major > 1 || (major == 1 && minor >= 1)), "MIT-SHM version %d.%d", major, minor);
    CHECK(pixmaps == True, "shared pixmaps %s", pixmaps ? "yes" : "no");
    int pixfmt = XShmPixmapFormat(dpy);
    CHECK(pixfmt == ZPixmap, "shared pixmap format %s", pixfmt == ZPixmap ? "ZPixmap" : "other");

    /* 2. two images in segments the server attaches */
    XShmSegmentInfo sa, sb;
    XImage *a = shm_image(dpy, vis, depth, &sa, "image A");
    XImage *b = shm_image(dpy, vis, depth, &sb, "image B");

    /* 3. pattern → A → XShmPutImage → pixmap → XShmGetImage → B */
    uint64_t want = 1469598103934665603ULL, got = want;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            XPutPixel(a, x, y, pattern(x, y));
            want = (want ^ pattern(x, y)) * 1099511628211ULL;
        }
    memset(b->data, 0, (size_t)b->bytes_per_line * b->height);
    Pixmap pm = XCreatePixmap(dpy, root, W, H, depth);
    GC gc = XCreateGC(dpy, pm, 0, NULL);
    x_error = 0;
    XShmPutImage(dpy, pm, gc, a, 0, 0, 0, 0, W, H, False);
    Status gst = XShmGetImage(dpy, pm, b, 0, 0, AllPlanes);
    XSync(dpy, False);
    CHECK(gst && !x_error, "XShmPutImage + XShmGetImage");
    long bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            unsigned long p = XGetPixel(b, x, y) & 0xffffff;
            got = (got ^ p) * 1099511628211ULL;
            if (p != pattern(x, y) && bad++ < 3)
                printf("pixel (%d,%d) = %06lx, want %06lx\n", x, y, p, pattern(x, y));
        }
    CHECK(bad == 0, "round trip through the server: %ld of %d pixels differ", bad, W * H);
    printf("checksum %016llx (expected %016llx)\n", (unsigned long long)got, (unsigned long long)want);
    CHECK(got == want, "checksum");

    /* 4. shared pixmap on A's memory: the server draws, the client sees it */
    x_error = 0;
    Pixmap sp = XShmCreatePixmap(dpy, root, sa.shmaddr, &sa, W, H, depth);
    XSetForeground(dpy, gc, 0x123456);
    XFillRectangle(dpy, sp, gc, 10, 20, 30, 40);
    XSync(dpy, False);
    CHECK(!x_error, "XShmCreatePixmap + XFillRectangle");
    long inside = 0, outside = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            unsigned long p = XGetPixel(a, x, y) & 0xffffff;
            int in = x >= 10 && x < 40 && y >= 20 && y < 60;
            if (in ? p != 0x123456 : p != pattern(x, y))
                (*(in ? &inside : &outside))++;
        }
    CHECK(inside == 0 && outside == 0,
          "server's drawing into the shared pixmap is in the client's mapping (%ld wrong inside, %ld outside)",
          inside, outside);
    XFreePixmap(dpy, sp);

    /* detach: the server detaches on XShmDetach, the segments go with the last detach */
    XFreePixmap(dpy, pm);
    XFreeGC(dpy, gc);
    XShmDetach(dpy, &sa);
    XShmDetach(dpy, &sb);
    XSync(dpy, False);
    struct shmid_ds ds;
    int r = shmctl(sa.shmid, IPC_STAT, &ds);
    CHECK(r == 0 && ds.shm_nattch == 1, "image A nattch after XShmDetach = %lu", r == 0 ? (unsigned long)ds.shm_nattch : 0UL);
    XDestroyImage(a);
    XDestroyImage(b);
    shmdt(sa.shmaddr);
    shmdt(sb.shmaddr);
    errno = 0;
    r = shmctl(sa.shmid, IPC_STAT, &ds);
    CHECK(r == -1 && errno == EINVAL, "image A's segment gone after the last detach (%s)", r == 0 ? "still there" : strerror(errno));
    XCloseDisplay(dpy);
    printf("%s\n", failures ? "FAILED" : "PASSED");
    return failures ? 1 : 0;
}
