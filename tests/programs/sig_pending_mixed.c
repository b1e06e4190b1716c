#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* One real-time signal pending several times in three queues at once: twice in the main
 * thread's own queue, twice in the process's shared one, once in another thread's. Taking
 * them to read them (LLDB's dump) must keep each in its queue and in its order: the main
 * thread's own come before the shared ones when it unblocks, the other thread's stays its. */
static int rt, values[8], count;
static pid_t tids[8];
static pthread_barrier_t stop, go;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)sig, (void)ctx;
    if (count < 8) {
        tids[count] = (pid_t)syscall(SYS_gettid);
        values[count++] = info->si_value.sival_int;
    }
}

static void *other(void *arg) {
    pthread_barrier_wait(&stop);
    pthread_barrier_wait(&go);
    pthread_sigmask(SIG_UNBLOCK, (sigset_t *)arg, 0);
    return 0;
}

int main(void) {
    rt = SIGRTMIN + 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(rt, &sa, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, rt);
    pthread_sigmask(SIG_BLOCK, &set, 0);
    pthread_barrier_init(&stop, 0, 2);
    pthread_barrier_init(&go, 0, 2);
    pthread_t thread;
    pthread_create(&thread, 0, other, &set);
    pid_t pid = getpid();
    pthread_sigqueue(pthread_self(), rt, (union sigval){.sival_int = 11});
    sigqueue(pid, rt, (union sigval){.sival_int = 21});
    pthread_sigqueue(pthread_self(), rt, (union sigval){.sival_int = 12});
    sigqueue(pid, rt, (union sigval){.sival_int = 22});
    pthread_sigqueue(thread, rt, (union sigval){.sival_int = 31});
    pthread_barrier_wait(&stop);
    checkpoint();
    pthread_sigmask(SIG_UNBLOCK, &set, 0);
    CHECK(count == 4 && values[0] == 11 && values[1] == 12 && values[2] == 21
          && values[3] == 22, "main thread: its own two, then the shared two, in order "
          "(%d: %d %d %d %d)", count, values[0], values[1], values[2], values[3]);
    CHECK(tids[0] == getpid() && tids[3] == getpid(), "all four delivered to the main thread");
    pthread_barrier_wait(&go);
    pthread_join(thread, 0);
    CHECK(count == 5 && values[4] == 31 && tids[4] != getpid(),
          "the other thread's own, delivered to it once it unblocks (value %d)", values[4]);
    return 0;
}
