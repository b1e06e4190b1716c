#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include "selfcheck.h"
/* prctl state of the process and of two threads, each checked after the restore. */
#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#define PR_GET_THP_DISABLE 42
#endif
static pthread_barrier_t stop, go;

static void check_thread(const char *who, int sig, long slack) {
    int got = -1;
    prctl(PR_GET_PDEATHSIG, &got);
    CHECK(got == sig, "%s: parent-death signal %d (wanted %d)", who, got, sig);
    long now = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    CHECK(now == slack, "%s: timer slack %ld (wanted %ld)", who, now, slack);
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "%s: no_new_privs", who);
    CHECK(prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == 1, "%s: keep-caps", who);
}

static void *worker(void *arg) {
    (void)arg;
    prctl(PR_SET_PDEATHSIG, SIGUSR1);
    prctl(PR_SET_TIMERSLACK, 777777);
    pthread_barrier_wait(&stop);
    pthread_barrier_wait(&go);
    check_thread("worker", SIGUSR1, 777777);
    return 0;
}

int main(void) {
    pthread_t thread;
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_SET_KEEPCAPS, 1);
    pthread_barrier_init(&stop, 0, 2);
    pthread_barrier_init(&go, 0, 2);
    pthread_create(&thread, 0, worker, 0);
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    prctl(PR_SET_PDEATHSIG, SIGUSR2);
    prctl(PR_SET_TIMERSLACK, 123456);
    prctl(PR_SET_DUMPABLE, 0);
    pthread_barrier_wait(&stop);
    checkpoint();
    pthread_barrier_wait(&go);
    check_thread("main", SIGUSR2, 123456);
    CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disabled");
    int reaper = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &reaper);
    CHECK(reaper == 1, "child subreaper %d", reaper);
    CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, "dumpable 0");
    pthread_join(thread, 0);
    return 0;
}
