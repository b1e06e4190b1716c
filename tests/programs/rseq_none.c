#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* A program that unregistered glibc's rseq area (or ran with glibc.pthread.rseq=0) has none
 * registered after the restore. */
static struct rseq probe_area __attribute__((aligned(32)));

/* 0: nothing registered; else registered (with glibc's area or another) */
static int registered(void) {
    if (syscall(SYS_rseq, &probe_area, 32, 0, RSEQ_SIG) == 0) {
        syscall(SYS_rseq, &probe_area, 32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
        return 0;
    }
    return errno == EINVAL ? 1 : -errno;
}

int main(void) {
    long r = 0;
    if (__rseq_size != 0) {
        unsigned int len = __rseq_size < 32 ? 32 : __rseq_size;
        void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
        r = syscall(SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
    }
    checkpoint();
    int now = registered();
    CHECK(r == 0 && now == 0, "no rseq area registered after the restore (probe %d)", now);
    return 0;
}
