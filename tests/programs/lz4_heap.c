/* A heap of pages of every kind a compressed dump stores (issue 14, img-dump --compress):
   structured pages LZ4 shrinks, pages of noise stored raw, zero pages left out, and a run
   longer than one compressed run (64 pages). After the restore every byte is checked
   against the same content computed again, and a thread's own state too. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "selfcheck.h"

#define PAGES 600
#define PAGE 4096

static unsigned char *heap;
static volatile unsigned long worker_sum;
static __thread unsigned long mine = 7;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go;

static uint64_t noise(uint64_t x) {  /* splitmix64: pages of it do not compress */
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static void page_content(size_t p, unsigned char *out) {
    uint64_t *words = (uint64_t *)out;
    if (p % 97 == 5) {
        memset(out, 0, PAGE);
    } else if (p % 131 == 7 || (p >= 400 && p < 470)) {
        for (int i = 0; i < PAGE / 8; i++)
            words[i] = noise(p * 1000 + i);
    } else {
        for (int i = 0; i < PAGE / 8; i++)  /* a table of small records: compresses */
            words[i] = i % 2 ? p * 16 + i % 5 : 0x55550000 + (uint64_t)(i / 2);
    }
}

static void *worker(void *arg) {
    (void)arg;
    mine = 4242;
    pthread_mutex_lock(&lock);
    while (!go)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    worker_sum = mine + 1;
    return 0;
}

int main(void) {
    heap = aligned_alloc(PAGE, (size_t)PAGES * PAGE);
    for (size_t p = 0; p < PAGES; p++)
        page_content(p, heap + p * PAGE);
    pthread_t thread;
    pthread_create(&thread, 0, worker, 0);
    unsigned long local = 31337;
    checkpoint();
    pthread_mutex_lock(&lock);
    go = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, 0);
    unsigned char expected[PAGE];
    int bad = -1;
    for (size_t p = 0; p < PAGES && bad < 0; p++) {
        page_content(p, expected);
        if (memcmp(expected, heap + p * PAGE, PAGE))
            bad = (int)p;
    }
    CHECK(bad < 0, "all %d heap pages as they were (first different: %d)", PAGES, bad);
    CHECK(local == 31337, "a local of main's frame");
    CHECK(worker_sum == 4243, "the thread's own TLS value after the restore (%lu)",
          worker_sum);
    return selfcheck_failures != 0;
}
