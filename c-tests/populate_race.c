/* populate_race — S164 S166
 * MADV_POPULATE_READ of a large fresh segment by its only attacher while
 * another process attaches it and writes into it at the same moment: every
 * byte the other process wrote is there afterwards, seen by both, however the
 * two interleave, and the populated range reads as zeros elsewhere. Repeated
 * with the other process writing from the end of the segment backwards (where
 * a populate that proceeds from the start arrives last), then from the start.
 */
#include "common.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define NP 16384 /* 64 MiB: a populate that takes a while */
#define ROUNDS 6

static int wait_byte(int fd)
{
    char c;
    return read(fd, &c, 1) == 1 ? c : -1;
}

static void send_byte(int fd, char c)
{
    if (write(fd, &c, 1) != 1)
        _exit(3);
}

int main(void)
{
    int lost_total = 0, zero_ok = 1, child_ok = 1;
    for (int round = 0; round < ROUNDS; round++) {
        int id = T("setup", shmget(IPC_PRIVATE, NP * PAGE, 0600));
        int go[2], done[2];
        if (id < 0 || pipe(go) || pipe(done))
            return 1;
        int backwards = round % 2 == 0;
        pid_t pid = fork();
        if (pid == 0) {
            /* the other process: attach as soon as told, write one mark per
             * page (every other page), report, then check after the populate */
            if (wait_byte(go[0]) != 'g')
                _exit(2);
            usleep((useconds_t)(round / 2) * 700);
            char *p = shmat(id, NULL, 0);
            if (p == FAILED)
                _exit(4);
            for (long k = 0; k < NP / 2; k++) {
                long i = backwards ? NP - 1 - 2 * k : 2 * k;
                p[i * PAGE + 7] = (char)(1 + i % 251);
            }
            send_byte(done[1], 'w');
            if (wait_byte(go[0]) != 'c')
                _exit(5);
            int bad = 0;
            for (long i = 0; i < NP; i++) {
                char want = (backwards ? (NP - 1 - i) % 2 == 0 : i % 2 == 0) ? (char)(1 + i % 251) : 0;
                bad += p[i * PAGE + 7] != want;
            }
            shmdt(p);
            _exit(bad ? 6 : 0);
        }
        char *w = A("setup", shmat(id, NULL, 0), NULL);
        if (w == FAILED)
            return 1;
        /* the other process starts attaching now, while the populate runs */
        send_byte(go[1], 'g');
        int rc = madvise(w, NP * PAGE, MADV_POPULATE_READ);
        if (rc != 0)
            out("round %d: madvise = %s", round, errname(errno));
        if (wait_byte(done[0]) != 'w')
            child_ok = 0;
        int lost = 0, zero = 1;
        for (long i = 0; i < NP; i++) {
            int marked = backwards ? (NP - 1 - i) % 2 == 0 : i % 2 == 0;
            char v = w[i * PAGE + 7];
            if (marked)
                lost += v != (char)(1 + i % 251);
            else
                zero &= v == 0 && w[i * PAGE] == 0;
        }
        lost_total += lost;
        zero_ok &= zero;
        send_byte(go[1], 'c');
        int st;
        waitpid(pid, &st, 0);
        child_ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
        T("cleanup", shmdt(w));
        T("cleanup", shmctl(id, IPC_RMID, NULL));
        close(go[0]), close(go[1]), close(done[0]), close(done[1]);
    }
    out("S166 marks lost = %d", lost_total);
    out("S166 unmarked pages zero = %d", zero_ok);
    out("S166 the other process saw its marks = %d", child_ok);
    return 0;
}
