#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "selfcheck.h"
/* A program that registered its own rseq area (another signature) in place of glibc's has
 * that one after the restore, and the kernel keeps updating it; another thread keeps glibc's. */
#define OWN_SIG 0x0badc0de
static struct rseq own __attribute__((aligned(32)));
static volatile int go, thread_probe = -9;

static struct rseq *glibc_area(void) {
    return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

static unsigned int glibc_len(void) { return __rseq_size < 32 ? 32 : __rseq_size; }

/* 1: registered with exactly this area, 0: nothing registered, -1: something else */
static int probe(void *area, unsigned int len, uint32_t sig) {
    long r = syscall(SYS_rseq, area, len, 0, sig);
    if (r == 0) {
        syscall(SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, sig);
        return 0;
    }
    return errno == EBUSY ? 1 : -1;
}

static void *other(void *arg) {
    (void)arg;
    struct timespec nap = {0, 5000000};
    while (!go)
        nanosleep(&nap, 0);
    thread_probe = probe(glibc_area(), glibc_len(), RSEQ_SIG);
    return 0;
}

int main(void) {
    if (__rseq_size == 0) {
        CHECK(1, "glibc registers no rseq area here: nothing to check");
        return 0;
    }
    pthread_t thread;
    pthread_create(&thread, 0, other, 0);
    long r = syscall(SYS_rseq, glibc_area(), glibc_len(), RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
    long s = syscall(SYS_rseq, &own, 32, 0, OWN_SIG);
    checkpoint();
    CHECK(r == 0 && s == 0, "set up: glibc's area unregistered, the own one registered");
    int now = probe(&own, 32, OWN_SIG);
    CHECK(now == 1, "the own rseq area is registered with its signature (probe %d)", now);
    CHECK(probe(glibc_area(), glibc_len(), RSEQ_SIG) == -1, "glibc's area is not");
    own.cpu_id = (uint32_t)-77;
    struct timespec nap = {0, 1000000};
    nanosleep(&nap, 0); /* scheduled out: the kernel writes the area on the way back */
    CHECK(own.cpu_id != (uint32_t)-77, "the kernel updates it: cpu_id %d", (int)own.cpu_id);
    go = 1;
    pthread_join(thread, 0);
    CHECK(thread_probe == 1, "the other thread has glibc's area (probe %d)", thread_probe);
    return 0;
}
