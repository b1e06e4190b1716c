#include <pthread.h>
#include <signal.h>
#include "checkpoint.h"
/* Three workers block on a condition variable; main takes the checkpoint once all of them
   wait, then releases them after the restore and joins them. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER, ready = PTHREAD_COND_INITIALIZER;
static int waiting, released;
static long results[3];

static void *worker(void *arg) {
    long id = (long)arg, sum = 0;
    pthread_mutex_lock(&lock);
    waiting++;
    pthread_cond_signal(&ready);
    while (!released)
        pthread_cond_wait(&go, &lock);
    pthread_mutex_unlock(&lock);
    for (long i = 1; i <= 1000 * (id + 1); i++)
        sum += i * (id + 1);
    results[id] = sum;
    return (void *)(sum % 1000);
}

int main(void) {
    pthread_t threads[3];
    for (long i = 0; i < 3; i++)
        pthread_create(&threads[i], 0, worker, (void *)i);
    pthread_mutex_lock(&lock);
    while (waiting < 3)
        pthread_cond_wait(&ready, &lock);
    pthread_mutex_unlock(&lock);
    printf("all %d workers wait\n", waiting);
    checkpoint();
    for (int i = 0; i < 3; i++) /* signal 0 checks the thread id glibc keeps */
        printf("worker %d alive=%d\n", i, pthread_kill(threads[i], 0) == 0);
    pthread_mutex_lock(&lock);
    released = 1;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 3; i++) {
        void *ret;
        int err = pthread_join(threads[i], &ret);
        printf("worker %d joined=%d result=%ld ret=%ld\n", i, err == 0, results[i], (long)ret);
    }
    return 0;
}
