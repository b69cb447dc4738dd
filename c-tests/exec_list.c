/* exec_list — S121
 * execl, execlp and execle (the variadic exec calls) end the caller's attaches
 * before the new image runs, exactly as execve does: the parent's IPC_STAT,
 * made after the exec'd image has answered, counts only its own attach. The
 * argument lists arrive intact whatever their length (in registers, on the
 * stack, hundreds long) and execle passes its environment.
 */
#include "common.h"

extern char **environ;

static char exe[4096];

/* exec'd helper: argv = [name, "helper", wfd, rfd, extra...] */
static int helper(int argc, char **argv)
{
    int wfd = atoi(argv[2]), rfd = atoi(argv[3]);
    char joined[256] = "";
    int all_x = 1;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "x") != 0) all_x = 0;
        if (strlen(joined) + strlen(argv[i]) + 2 < sizeof joined) {
            if (i > 4) strcat(joined, ",");
            strcat(joined, argv[i]);
        }
    }
    const char *v = getenv("EXEC_LIST");
    int nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    if (argc > 40)
        out("helper argc=%d all-x=%d env=%s", argc, all_x, v ? v : "unset");
    else
        out("helper argc=%d extra=[%s] env=%s nenv=%s", argc, joined, v ? v : "unset",
            v ? (nenv == 2 ? "2" : "other") : "inherited");
    sync_send(wfd);
    sync_wait(rfd);
    return 0;
}

#define X10 "x", "x", "x", "x", "x", "x", "x", "x", "x", "x"
#define X100 X10, X10, X10, X10, X10, X10, X10, X10, X10, X10

static char *envv[] = {"EXEC_LIST=from-execle", "OTHER=1", NULL};

/* One exec through case k in a child; the parent watches nattch. */
static void run(int id, int k, const char *label)
{
    struct sync2 s;
    char w[16], r[16];
    sync_init(&s);
    sprintf(w, "%d", s.c2p[1]);
    sprintf(r, "%d", s.p2c[0]);
    pid_t c = fork();
    if (c == 0) {
        char dir[4096];
        const char *base = strrchr(exe, '/') + 1;
        switch (k) {
        case 0: /* every element in a register */
            execl(exe, exe, "helper", w, r, (char *)NULL);
            break;
        case 1: /* the list continues on the stack */
            execl(exe, exe, "helper", w, r, "a", "b", "c", "d", "e", "f", "g", (char *)NULL);
            break;
        case 2: /* longer than any fixed buffer */
            execl(exe, exe, "helper", w, r, X100, X100, X100, (char *)NULL);
            break;
        case 3: /* execlp searches PATH */
            snprintf(dir, sizeof dir, "%.*s", (int)(base - exe - 1), exe);
            setenv("PATH", dir, 1);
            execlp(base, base, "helper", w, r, "p", "q", "r", "s", (char *)NULL);
            break;
        case 4: /* execle: the NULL and envp in registers */
            execle(exe, exe, "helper", w, r, (char *)NULL, envv);
            break;
        case 5: /* execle: the NULL in the last register, envp on the stack */
            execle(exe, exe, "helper", w, r, "e1", (char *)NULL, envv);
            break;
        case 6: /* execle: both on the stack */
            execle(exe, exe, "helper", w, r, "e1", "e2", "e3", "e4", "e5", "e6", (char *)NULL, envv);
            break;
        }
        out("%s child: exec failed %s", label, errname(errno));
        _exit(127);
    }
    name_pid(c, "child");
    close(s.c2p[1]);
    close(s.p2c[0]);
    sync_wait(s.c2p[0]);
    char l[128];
    snprintf(l, sizeof l, "S121 %s: exec'd image running", label);
    show_nattch(l, id);
    sync_send(s.p2c[1]);
    reap(c, "child");
    snprintf(l, sizeof l, "S121 %s: child exited", label);
    show_nattch(l, id);
    close(s.c2p[0]);
    close(s.p2c[1]);
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "helper") == 0) return helper(argc, argv);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        out("FATAL readlink");
        return 1;
    }
    exe[n] = 0;

    int id = T("setup", shmget(IPC_PRIVATE, PAGE, 0600));
    char *p = A("setup", shmat(id, NULL, 0), NULL);
    if (p == FAILED) return 1;
    show_nattch("setup", id);

    run(id, 0, "execl short");
    run(id, 1, "execl long");
    run(id, 2, "execl 300 args");
    run(id, 3, "execlp");
    run(id, 4, "execle short");
    run(id, 5, "execle mid");
    run(id, 6, "execle long");

    /* failures leave the caller attached */
    errno = 0;
    int rc = execl("/nonexistent/prog", "prog", "a", (char *)NULL);
    out("S121 failed execl = %d %s", rc, errname(errno));
    errno = 0;
    rc = execlp("no-such-program-anywhere", "prog", (char *)NULL);
    out("S121 failed execlp = %d %s", rc, errname(errno));
    errno = 0;
    rc = execle("/nonexistent/prog", "prog", (char *)NULL, envv);
    out("S121 failed execle = %d %s", rc, errname(errno));
    show_nattch("S121 after failed execs", id);
    p[0] = 1;
    T("S121", shmdt(p));
    show_nattch("S121 after shmdt", id);
    T("S121", shmctl(id, IPC_RMID, NULL));
    return 0;
}
