#define _GNU_SOURCE
#include <errno.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* A program that unregistered glibc's rseq area has none registered after the restore. */
static struct rseq *glibc_area(void) {
    return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* 1: registered with glibc's area, 0: nothing registered, -1: something else */
static int probe(void) {
    unsigned int len = __rseq_size < 32 ? 32 : __rseq_size;
    long r = syscall(SYS_rseq, glibc_area(), len, 0, RSEQ_SIG);
    if (r == 0) {
        syscall(SYS_rseq, glibc_area(), len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
        return 0;
    }
    return errno == EBUSY ? 1 : -1;
}

int main(void) {
    if (__rseq_size == 0) {
        CHECK(1, "glibc registers no rseq area here: nothing to check");
        return 0;
    }
    unsigned int len = __rseq_size < 32 ? 32 : __rseq_size;
    long r = syscall(SYS_rseq, glibc_area(), len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
    checkpoint();
    int now = probe();
    CHECK(r == 0 && now == 0, "no rseq area registered after the restore (probe %d)", now);
    return 0;
}
