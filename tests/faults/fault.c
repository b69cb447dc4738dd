/* fault — one SysV operation per run, for the fault and hostile-user tests
 * (scripts/faults).  Every command prints what it observed on one line:
 * "ok ...", or the errno name of the call that failed.
 *
 *   fault create KEY SIZE MODE     shmget(IPC_CREAT); prints "ok ID"
 *   fault find KEY                 shmget(KEY, 0, 0)
 *   fault hold KEY SIZE MODE SECS  create, attach, fill with a pattern, print
 *                                  "ready", sleep SECS, check the pattern
 *   fault read KEY                 attach read-only, check the pattern
 *   fault write KEY                attach read-write, write one byte
 *   fault rdonly-mprotect KEY      attach SHM_RDONLY, then mprotect(PROT_WRITE)
 *   fault stat KEY                 IPC_STAT: "ok uid=U mode=M nattch=N"
 *   fault set KEY MODE [GID]       IPC_SET of the mode (and group)
 *   fault rm KEY                   IPC_RMID
 *   fault lock KEY                 SHM_LOCK
 *   fault many N                   N IPC_PRIVATE creates, then attach+detach each
 *                                  and IPC_RMID each: "created=C errno=E
 *                                  attached=A lost=L"
 *   fault signal SECS              SysV calls from a SIGALRM handler firing
 *                                  every 200 us while the main loop makes them
 *                                  too: "ok handler_ok=X handler_edeadlk=Y"
 *   fault forge SOCK SECS          a hostile client of a shared namespace: takes the
 *                                  server's shared epoll instance with HELLO and
 *                                  fills it with forged "participant died" and
 *                                  "server died" reports for SECS seconds
 *   fault exhaust KEY              first SysV call with every descriptor in use
 *                                  (must fail, not crash), then again with some
 *                                  free (must work): "first=E then=ok"
 *   fault chroot DIR KEY           chroot(DIR) before the first SysV call, then
 *                                  create, attach, write, remove
 *   fault setuid UID KEY           drop to UID before the first SysV call, then
 *                                  create, attach, write, read back, stat, remove
 *   fault flood SOCK               connects to SOCK until its backlog is full (the
 *                                  server does not accept), prints "flooded N"
 *                                  and holds the connections until killed
 *   fault lockhold REGISTRY [odd]  a participant of the same user that takes the
 *                                  registry lock (the robust mutex at offset 64)
 *                                  and stops itself (SIGSTOP) while holding it;
 *                                  "odd" also leaves the publication counter (the
 *                                  u64 at offset 128) odd, as a writer stopped
 *                                  while publishing would
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>

static const char *en(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case ENOSPC: return "ENOSPC";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case EIDRM: return "EIDRM";
    case ENOSYS: return "ENOSYS";
    case EDEADLK: return "EDEADLK";
    case EEXIST: return "EEXIST";
    default: return "E?";
    }
}

static int fail(const char *what) {
    printf("%s %s\n", what, en(errno));
    return 1;
}

static unsigned char pat(long i) { return (unsigned char)(i * 7 + 3); }

static int find(const char *k) {
    return shmget((key_t)strtoul(k, 0, 0), 0, 0);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *cmd = argv[1];
    setvbuf(stdout, 0, _IOLBF, 0);
    if (!strcmp(cmd, "flood") && argc == 3) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 20000) {
            rl.rlim_cur = rl.rlim_max < 20000 ? rl.rlim_max : 20000;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", argv[2]);
        int n = 0;
        for (;;) {
            int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
            if (s < 0) return fail("socket");
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
                if (errno == EAGAIN) break;
                return fail("connect");
            }
            n++;
        }
        printf("flooded %d\n", n);
        pause();
        return 0;
    }
    if (!strcmp(cmd, "lockhold") && (argc == 3 || argc == 4)) {
        int fd = open(argv[2], O_RDWR);
        if (fd < 0) return fail("open");
        unsigned char *m = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) return fail("mmap");
        int r = pthread_mutex_lock((pthread_mutex_t *)(m + 64));
        if (r != 0 && r != EOWNERDEAD) { errno = r; return fail("lock"); }
        if (argc == 4) __atomic_fetch_add((uint64_t *)(m + 128), 1, __ATOMIC_SEQ_CST);
        printf("held\n");
        raise(SIGSTOP);
        return 0;
    }
    if (!strcmp(cmd, "create") && argc == 5) {
        int id = shmget((key_t)strtoul(argv[2], 0, 0), strtoul(argv[3], 0, 0), IPC_CREAT | (int)strtol(argv[4], 0, 8));
        if (id < 0) return fail("shmget");
        printf("ok %d\n", id);
        return 0;
    }
    if (!strcmp(cmd, "find") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        printf("ok %d\n", id);
        return 0;
    }
    if (!strcmp(cmd, "hold") && argc == 6) {
        size_t size = strtoul(argv[3], 0, 0);
        int id = shmget((key_t)strtoul(argv[2], 0, 0), size, IPC_CREAT | (int)strtol(argv[4], 0, 8));
        if (id < 0) return fail("shmget");
        unsigned char *p = shmat(id, 0, 0);
        if (p == (void *)-1) return fail("shmat");
        for (size_t i = 0; i < size; i++) p[i] = pat(i);
        printf("ready\n");
        sleep(atoi(argv[5]));
        for (size_t i = 0; i < size; i++)
            if (p[i] != pat(i)) { printf("pattern broken at %zu\n", i); return 1; }
        printf("ok pattern intact\n");
        return shmdt(p) ? fail("shmdt") : 0;
    }
    if (!strcmp(cmd, "read") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        unsigned char *p = shmat(id, 0, SHM_RDONLY);
        if (p == (void *)-1) return fail("shmat");
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds)) return fail("IPC_STAT");
        for (size_t i = 0; i < ds.shm_segsz; i++)
            if (p[i] != pat(i)) { printf("pattern broken at %zu\n", i); return 1; }
        printf("ok pattern intact\n");
        return shmdt(p) ? fail("shmdt") : 0;
    }
    if (!strcmp(cmd, "write") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        unsigned char *p = shmat(id, 0, 0);
        if (p == (void *)-1) return fail("shmat");
        p[0] = 0xee;
        printf("ok\n");
        return shmdt(p) ? fail("shmdt") : 0;
    }
    if (!strcmp(cmd, "rdonly-mprotect") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        unsigned char *p = shmat(id, 0, SHM_RDONLY);
        if (p == (void *)-1) return fail("shmat");
        if (mprotect(p, 4096, PROT_READ | PROT_WRITE) == 0) { printf("mprotect succeeded\n"); return 1; }
        return fail("mprotect");
    }
    if (!strcmp(cmd, "stat") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds)) return fail("IPC_STAT");
        printf("ok uid=%u mode=%o nattch=%lu\n", ds.shm_perm.uid, ds.shm_perm.mode & 0777, (unsigned long)ds.shm_nattch);
        return 0;
    }
    if (!strcmp(cmd, "set") && (argc == 4 || argc == 5)) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        struct shmid_ds ds;
        memset(&ds, 0, sizeof ds);
        ds.shm_perm.uid = getuid();
        ds.shm_perm.gid = argc == 5 ? (gid_t)atoi(argv[4]) : getgid();
        ds.shm_perm.mode = (int)strtol(argv[3], 0, 8);
        if (shmctl(id, IPC_SET, &ds)) return fail("IPC_SET");
        printf("ok\n");
        return 0;
    }
    if (!strcmp(cmd, "rm") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        if (shmctl(id, IPC_RMID, 0)) return fail("IPC_RMID");
        printf("ok\n");
        return 0;
    }
    if (!strcmp(cmd, "lock") && argc == 3) {
        int id = find(argv[2]);
        if (id < 0) return fail("shmget");
        if (shmctl(id, SHM_LOCK, 0)) return fail("SHM_LOCK");
        printf("ok\n");
        return 0;
    }
    if (!strcmp(cmd, "many") && argc == 3) {
        int n = atoi(argv[2]), created = 0, attached = 0, lost = 0, err = 0;
        int *ids = calloc(n, sizeof *ids);
        for (int i = 0; i < n; i++) {
            int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
            if (id < 0) { err = errno; break; }
            ids[created++] = id;
        }
        for (int i = 0; i < created; i++) {
            char *p = shmat(ids[i], 0, 0);
            if (p == (void *)-1) { lost++; continue; }
            p[0] = 1;
            shmdt(p);
            attached++;
        }
        for (int i = 0; i < created; i++) shmctl(ids[i], IPC_RMID, 0);
        printf("created=%d errno=%s attached=%d lost=%d\n", created, err ? en(err) : "0", attached, lost);
        return lost != 0;
    }
    if (!strcmp(cmd, "signal") && argc == 3) {
        static volatile sig_atomic_t ok, dead, other;
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        if (id < 0) return fail("shmget");
        static int sid;
        sid = id;
        void handler(int s) {
            (void)s;
            int e = errno;
            struct shmid_ds ds;
            void *p = shmat(sid, 0, 0);
            if (p == (void *)-1) {
                if (errno == EDEADLK) dead++; else other++;
            } else {
                if (shmctl(sid, IPC_STAT, &ds) == 0 && shmdt(p) == 0) ok++; else other++;
            }
            errno = e;
        }
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = handler;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, 0);
        struct itimerval it = {{0, 200}, {0, 200}};
        setitimer(ITIMER_REAL, &it, 0);
        time_t end = time(0) + atoi(argv[2]);
        long loops = 0;
        while (time(0) < end) {
            void *p = shmat(id, 0, 0);
            struct shmid_ds ds;
            if (p != (void *)-1) { shmctl(id, IPC_STAT, &ds); shmdt(p); }
            loops++;
        }
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, 0);
        shmctl(id, IPC_RMID, 0);
        printf("ok loops>0=%d handler_ok>0=%d other=%d\n", loops > 0, ok > 0, (int)other);
        fprintf(stderr, "loops=%ld handler_ok=%d handler_edeadlk=%d other=%d\n", loops, (int)ok, (int)dead, (int)other);
        return 0;
    }
    if (!strcmp(cmd, "forge") && argc == 4) {
        int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, argv[2], sizeof sa.sun_path - 1);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa)) return fail("connect");
        unsigned char msg[168] = {0};
        uint32_t op = 1; /* HELLO */
        uint64_t pid = (uint64_t)getpid();
        memcpy(msg, &op, 4);
        memcpy(msg + 8, &pid, 8);
        if (send(s, msg, sizeof msg, 0) != (ssize_t)sizeof msg) return fail("send");
        char cbuf[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {msg, sizeof msg};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        if (recvmsg(s, &mh, 0) <= 0) return fail("recvmsg");
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (!cm || cm->cmsg_type != SCM_RIGHTS) { printf("no descriptors\n"); return 1; }
        int ep;
        memcpy(&ep, CMSG_DATA(cm), sizeof ep);
        int pfd[2];
        if (pipe(pfd)) return fail("pipe");
        if (write(pfd[1], "x", 1) != 1) return fail("write");
        int forged = 0;
        for (uint64_t kind = 1; kind <= 3; kind++)
            for (uint64_t entry = 0; entry < 16; entry++)
                for (uint64_t gen = 0; gen < 4; gen++) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = kind << 56 | entry << 32 | gen};
                    int d = dup(pfd[0]);
                    if (d >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, d, &ev) == 0) forged++;
                }
        printf("ok forged=%d\n", forged);
        sleep(atoi(argv[3]));
        return 0;
    }
    if (!strcmp(cmd, "exhaust") && argc == 3) {
        int fds[65536], n = 0;
        while (n < 65536) {
            int fd = dup(1);
            if (fd < 0) break;
            fds[n++] = fd;
        }
        int id = shmget((key_t)strtoul(argv[2], 0, 0), 4096, IPC_CREAT | 0600);
        const char *first = id < 0 ? en(errno) : "ok";
        for (int i = 0; i < n; i++) close(fds[i]);
        id = shmget((key_t)strtoul(argv[2], 0, 0), 4096, IPC_CREAT | 0600);
        if (id < 0) return fail("shmget");
        char *p = shmat(id, 0, 0);
        if (p == (void *)-1) return fail("shmat");
        p[0] = 1;
        /* A fork with every descriptor in use: the child's attach cannot be
         * registered, so there is no child (never one that nobody counts). */
        n = 0;
        while (n < 65536) {
            int fd = dup(1);
            if (fd < 0) break;
            fds[n++] = fd;
        }
        pid_t c = fork();
        if (c == 0) _exit(0);
        const char *forked = c < 0 ? en(errno) : "ok";
        if (c > 0) waitpid(c, 0, 0);
        for (int i = 0; i < n; i++) close(fds[i]);
        c = fork();
        if (c < 0) return fail("fork");
        if (c == 0) {
            struct shmid_ds d;
            p[1] = (shmctl(id, IPC_STAT, &d) == 0 && d.shm_nattch == 2) ? 2 : 9;
            _exit(0);
        }
        waitpid(c, 0, 0);
        struct shmid_ds d;
        if (shmctl(id, IPC_STAT, &d) || d.shm_nattch != 1 || p[1] != 2) return fail("child's attach");
        shmdt(p);
        if (shmctl(id, IPC_RMID, 0)) return fail("IPC_RMID");
        printf("first=%s fork=%s then=ok\n", first, forked);
        return 0;
    }
    if (!strcmp(cmd, "chroot") && argc == 4) {
        if (chroot(argv[2]) || chdir("/")) return fail("chroot");
        int id = shmget((key_t)strtoul(argv[3], 0, 0), 8192, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) return fail("shmget");
        char *p = shmat(id, 0, 0);
        if (p == (void *)-1) return fail("shmat");
        strcpy(p, "rooted");
        shmdt(p);
        if (shmctl(id, IPC_RMID, 0)) return fail("IPC_RMID");
        printf("ok\n");
        return 0;
    }
    if (!strcmp(cmd, "setuid") && argc == 4) {
        uid_t uid = (uid_t)atoi(argv[2]);
        if (setgid(uid) || setuid(uid)) return fail("setuid");
        int id = shmget((key_t)strtoul(argv[3], 0, 0), 8192, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) return fail("shmget");
        char *p = shmat(id, 0, 0);
        if (p == (void *)-1) return fail("shmat");
        strcpy(p, "dropped");
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds)) return fail("IPC_STAT");
        char *q = shmat(id, 0, SHM_RDONLY);
        if (q == (void *)-1) return fail("shmat2");
        int same = strcmp(q, "dropped") == 0;
        shmdt(q);
        shmdt(p);
        if (shmctl(id, IPC_RMID, 0)) return fail("IPC_RMID");
        printf("ok uid=%u nattch=%lu same=%d\n", ds.shm_perm.uid, (unsigned long)ds.shm_nattch, same);
        return 0;
    }
    fprintf(stderr, "fault: bad command\n");
    return 2;
}
