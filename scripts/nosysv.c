/* nosysv — run a program with the kernel's System V shared memory disabled.
 *
 *   nosysv PROG ARGS...
 *
 * Installs a seccomp BPF filter (written by hand, no libseccomp) under which
 * shmget, shmat, shmctl and shmdt fail with ENOSYS, sets PR_SET_NO_NEW_PRIVS,
 * then execvp()s PROG.  The filter is inherited by every descendant, so any
 * SysV shared memory a test observes inside must come from the shim.
 *
 * Covered entry points:
 *   x86_64: shmget(29) shmat(30) shmctl(31) shmdt(67)
 *   x32:    the same numbers with __X32_SYSCALL_BIT set
 *   i386:   shmget(395) shmctl(396) shmat(397) shmdt(398) and the shm
 *           sub-calls of the ipc(117) multiplexer (SHMAT=21, SHMDT=22,
 *           SHMGET=23, SHMCTL=24); semaphore and message calls pass.
 * Everything else (including unknown architectures) is allowed.
 *
 * Exit status: that of PROG (it is exec'd); 127 if PROG cannot be run,
 * 126 if the filter cannot be installed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef __X32_SYSCALL_BIT
#define __X32_SYSCALL_BIT 0x40000000
#endif

#define LD_ARCH BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch))
#define LD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
/* low 32 bits of args[0] (little endian) */
#define LD_ARG0 BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]))
#define JEQ(k, t, f) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f))
#define RET(k) BPF_STMT(BPF_RET | BPF_K, (k))

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROG [ARGS...]\n", argv[0]);
        return 2;
    }

    struct sock_filter filter[] = {
        /* 0 */ LD_ARCH,
        /* 1 */ JEQ(AUDIT_ARCH_X86_64, 0, 8),          /* else → 10 */
        /* x86_64 and x32: ignore the x32 bit */
        /* 2 */ LD_NR,
        /* 3 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~(__u32)__X32_SYSCALL_BIT),
        /* 4 */ JEQ(29, 4, 0),                          /* shmget → 9 */
        /* 5 */ JEQ(30, 3, 0),                          /* shmat  → 9 */
        /* 6 */ JEQ(31, 2, 0),                          /* shmctl → 9 */
        /* 7 */ JEQ(67, 1, 0),                          /* shmdt  → 9 */
        /* 8 */ RET(SECCOMP_RET_ALLOW),
        /* 9 */ RET(SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        /* 10 */ JEQ(AUDIT_ARCH_I386, 0, 13),          /* else → 24 allow */
        /* 11 */ LD_NR,
        /* 12 */ JEQ(395, 10, 0),                       /* shmget → 23 */
        /* 13 */ JEQ(396, 9, 0),                        /* shmctl → 23 */
        /* 14 */ JEQ(397, 8, 0),                        /* shmat  → 23 */
        /* 15 */ JEQ(398, 7, 0),                        /* shmdt  → 23 */
        /* 16 */ JEQ(117, 0, 7),                        /* ipc? else → 24 */
        /* 17 */ LD_ARG0,
        /* 18 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xffff),
        /* 19 */ JEQ(21, 3, 0),                         /* SHMAT  → 23 */
        /* 20 */ JEQ(22, 2, 0),                         /* SHMDT  → 23 */
        /* 21 */ JEQ(23, 1, 0),                         /* SHMGET → 23 */
        /* 22 */ JEQ(24, 0, 1),                         /* SHMCTL → 23, else 24 */
        /* 23 */ RET(SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        /* 24 */ RET(SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "nosysv: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
        return 126;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
        fprintf(stderr, "nosysv: PR_SET_SECCOMP: %s\n", strerror(errno));
        return 126;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "nosysv: %s: %s\n", argv[1], strerror(errno));
    return 127;
}
