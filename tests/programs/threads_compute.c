#include <pthread.h>
#include <stdatomic.h>
#include "checkpoint.h"
/* The checkpoint is taken while a worker is in the middle of a long computation on its own
   __thread data; it finishes after the restore with the uninterrupted run's result. */
static __thread unsigned long state = 12345;
static __thread double scaled = 1.0;
static atomic_long progress;
static atomic_int stop;

static void __attribute__((noinline)) compute(long rounds) {
    for (long i = 0; i < rounds; i++) {
        state = state * 6364136223846793005UL + 1442695040888963407UL;
        scaled = scaled * 0.999999 + (double)(state >> 60);
        atomic_store(&progress, i);
    }
}

static void *worker(void *arg) {
    (void)arg;
    state = 777;
    compute(40000000);
    printf("worker: state=%lu scaled=%.6f\n", state, scaled);
    return 0;
}

int main(void) {
    pthread_t thread;
    pthread_create(&thread, 0, worker, 0);
    while (atomic_load(&progress) < 1000000)
        ;
    printf("main: worker is computing, main state=%lu\n", state);
    checkpoint();
    state += 1;
    pthread_join(thread, 0);
    printf("main: joined, main state=%lu\n", state);
    return 0;
}
