#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* Twelve threads, each with state of its own that no other thread has: nice value, timer
 * slack, keep-caps, name, signal mask, alternate stack and a real-time signal queued for it
 * alone with its own value. The dump reads them all in the same resumes (one table per
 * thread): each thread checks after the restore that it got its own back, not another's. */
#define THREADS 12
#define STACK 16384
static pthread_barrier_t stop, go;
static char stacks[THREADS][STACK];
static __thread int got_value = -1;
static int rt;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)sig, (void)ctx;
    got_value = info->si_value.sival_int;
}

static void mask_of(int i, sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, rt);
    sigaddset(set, SIGRTMIN + 4 + i);
}

static void setup(int i) {
    setpriority(PRIO_PROCESS, syscall(SYS_gettid), i % 19 + 1);
    prctl(PR_SET_TIMERSLACK, 1000 * (i + 1) + 7, 0, 0, 0);
    prctl(PR_SET_KEEPCAPS, i & 1, 0, 0, 0);
    char name[16];
    snprintf(name, sizeof name, "own-%d", i);
    prctl(PR_SET_NAME, name);
    sigset_t set;
    mask_of(i, &set);
    pthread_sigmask(SIG_SETMASK, &set, 0);
    stack_t ss = {.ss_sp = stacks[i], .ss_size = STACK, .ss_flags = 0};
    sigaltstack(&ss, 0);
}

static void check(int i) {
    int nice = getpriority(PRIO_PROCESS, syscall(SYS_gettid));
    long slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    int keep = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
    char name[16] = "", want_name[16];
    prctl(PR_GET_NAME, name);
    snprintf(want_name, sizeof want_name, "own-%d", i);
    sigset_t now, want;
    pthread_sigmask(SIG_SETMASK, 0, &now);
    mask_of(i, &want);
    int mask_ok = 1;
    for (int s = 1; s < 65; s++)
        mask_ok &= sigismember(&now, s) == sigismember(&want, s);
    stack_t ss;
    sigaltstack(0, &ss);
    sigset_t pending;
    sigpending(&pending);
    int was_pending = sigismember(&pending, rt);
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, rt);
    pthread_sigmask(SIG_UNBLOCK, &mine, 0);
    CHECK(nice == i % 19 + 1 && slack == 1000 * (i + 1) + 7 && keep == (i & 1)
          && strcmp(name, want_name) == 0 && mask_ok && ss.ss_sp == stacks[i]
          && ss.ss_size == STACK && ss.ss_flags == 0 && was_pending && got_value == i,
          "thread %d: nice %d, slack %ld, keep-caps %d, name %s, mask %s, altstack %s, "
          "its signal %s with value %d", i, nice, slack, keep, name, mask_ok ? "ok" : "wrong",
          ss.ss_sp == stacks[i] && ss.ss_size == STACK ? "ok" : "wrong",
          was_pending ? "pending" : "not pending", got_value);
}

static void *worker(void *arg) {
    int i = (int)(intptr_t)arg;
    setup(i);
    pthread_barrier_wait(&stop);
    pthread_barrier_wait(&go);
    check(i);
    return 0;
}

int main(void) {
    rt = SIGRTMIN + 3;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(rt, &sa, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, rt);
    pthread_sigmask(SIG_BLOCK, &set, 0);  /* inherited: no thread takes another's signal */
    pthread_barrier_init(&stop, 0, THREADS);
    pthread_barrier_init(&go, 0, THREADS);
    pthread_t threads[THREADS];
    for (int i = 1; i < THREADS; i++)
        pthread_create(&threads[i], 0, worker, (void *)(intptr_t)i);
    setup(0);
    pthread_barrier_wait(&stop);
    for (int i = 1; i < THREADS; i++)
        pthread_sigqueue(threads[i], rt, (union sigval){.sival_int = i});
    pthread_sigqueue(pthread_self(), rt, (union sigval){.sival_int = 0});
    checkpoint();
    pthread_barrier_wait(&go);
    check(0);
    for (int i = 1; i < THREADS; i++)
        pthread_join(threads[i], 0);
    return 0;
}
