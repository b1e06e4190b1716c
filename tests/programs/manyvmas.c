/* manyvmas N [THREADS]: N anonymous one-page VMAs (alternating protection, so that they do not
   merge) and THREADS-1 threads waiting, then checkpoint(); afterwards each VMA's protection
   and contents are checked. For scripts/bench's scaling table. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "checkpoint.h"

static volatile int go;

static void *wait_for_go(void *arg) {
    while (!go)
        usleep(1000);
    return arg;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100, threads = argc > 2 ? atol(argv[2]) : 1;
    long page = sysconf(_SC_PAGESIZE);
    char *base = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return 1;
    for (long i = 0; i < n; i++)
        base[i * page] = (char)(i % 127 + 1);
    for (long i = 1; i < n; i += 2)
        mprotect(base + i * page, page, PROT_READ);
    pthread_t *ids = calloc(threads, sizeof *ids);
    for (long i = 1; i < threads; i++)
        pthread_create(&ids[i], NULL, wait_for_go, NULL);
    checkpoint();
    go = 1;
    for (long i = 1; i < threads; i++)
        pthread_join(ids[i], NULL);
    long bad = 0;
    for (long i = 0; i < n; i++)
        bad += base[i * page] != (char)(i % 127 + 1);
    for (long i = 0; i < n; i += 2)
        base[i * page] = 0;  /* writable: faults if it came back read-only */
    printf("manyvmas %ld %ld: %s\n", n, threads, bad ? "FAIL" : "ok");
    return bad != 0;
}
