/* Three checkpoints of a threaded program: between them main rewrites CHANGED pages of a
   heap of PAGES pages and a worker advances its own computation. `current` records which
   checkpoint was taken last, so a restore from any of them finishes the remaining stages
   and checks the final state against what it computes again from scratch. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "selfcheck.h"

#define PAGES 1024
#define CHANGED 16
#define STAGES 3

static unsigned char *heap;
static volatile int current;  /* the checkpoint taken last */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go, done;
static unsigned long worker_acc;
static __thread unsigned long mine = 99;

static unsigned long step(unsigned long acc, int stage) {
    for (int i = 0; i < 100000; i++)
        acc = acc * 6364136223846793005UL + 1442695040888963407UL + stage;
    return acc;
}

static void *worker(void *arg) {
    (void)arg;
    for (int s = 1; s <= STAGES; s++) {
        pthread_mutex_lock(&lock);
        while (go < s)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        mine = step(mine, s);
        worker_acc = mine;
        pthread_mutex_lock(&lock);
        done = s;
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
    }
    return 0;
}

static void fill(int stage) {
    for (int p = 0; p < CHANGED; p++)
        memset(heap + (size_t)(stage * CHANGED + p) * 4096, stage * 31 + stage * CHANGED + p,
               4096);  /* every changed page different from every other */
}

int main(void) {
    heap = malloc((size_t)PAGES * 4096);
    for (size_t i = 0; i < (size_t)PAGES * 4096; i++)
        heap[i] = (unsigned char)(i * 7 + i / 4096);
    pthread_t thread;
    pthread_create(&thread, 0, worker, 0);
    unsigned long local = 5;
    for (int s = 1; s <= STAGES; s++) {
        fill(s);
        pthread_mutex_lock(&lock);
        go = s;
        pthread_cond_broadcast(&cond);
        while (done < s)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        local = local * 3 + s;
        current = s;
        checkpoint();
        printf("resumed after checkpoint %d\n", current);
        fflush(stdout);
    }
    pthread_join(thread, 0);
    unsigned long expect = 99;
    for (int s = 1; s <= STAGES; s++)
        expect = step(expect, s);
    CHECK(worker_acc == expect, "the worker's computation (%lx)", worker_acc);
    CHECK(local == ((5 * 3 + 1) * 3 + 2) * 3 + 3, "main's local (%lu)", local);
    int bad = -1;
    for (size_t i = 0; i < (size_t)PAGES * 4096 && bad < 0; i++) {
        size_t page = i / 4096;
        int stage = page / CHANGED;
        unsigned char want = stage >= 1 && stage <= STAGES ? (unsigned char)(stage * 31 + page)
                                                           : (unsigned char)(i * 7 + page);
        if (heap[i] != want)
            bad = (int)i;
    }
    CHECK(bad < 0, "the heap (first bad byte %d)", bad);
    printf("done\n");
    return selfcheck_failures != 0;
}
