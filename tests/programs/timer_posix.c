#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "selfcheck.h"
/* POSIX timers keep their ids, notifications and remaining times: one with a chosen id
 * (12345) signalling the process with a sigev_value, one without notification, and one
 * signalling another thread (SIGEV_THREAD_ID). After the restore timer_gettime and
 * timer_settime work on the same ids and the signals come with their values. */
#define CHOSEN 12345
static volatile int fired_value, fired_timerid, fired_count, thread_value;
static volatile pid_t fired_tid, thread_tid, start_tid;
static volatile int go;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    if (sig == SIGRTMIN + 3) {
        fired_value = info->si_value.sival_int;
        fired_timerid = info->si_timerid;
        fired_count++;
    } else {
        thread_value = info->si_value.sival_int;
        fired_tid = (pid_t)syscall(SYS_gettid);
    }
}

static void *other(void *arg) {
    (void)arg;
    start_tid = (pid_t)syscall(SYS_gettid);
    struct timespec nap = {0, 5000000};
    while (!go)
        nanosleep(&nap, 0);
    thread_tid = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < 1600 && !fired_tid; i++)
        nanosleep(&nap, 0);
    return 0;
}

static int wait_for(volatile int *what, int wanted) {
    struct timespec nap = {0, 5000000};
    for (int i = 0; i < 1600 && *what < wanted; i++)
        nanosleep(&nap, 0);
    return *what >= wanted;
}

static long long left_ms(timer_t id, long long *interval_ms) {
    struct itimerspec spec;
    if (timer_gettime(id, &spec) != 0)
        return -1;
    if (interval_ms)
        *interval_ms = spec.it_interval.tv_sec * 1000LL + spec.it_interval.tv_nsec / 1000000;
    return spec.it_value.tv_sec * 1000LL + spec.it_value.tv_nsec / 1000000;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 3, &sa, 0);
    sigaction(SIGUSR1, &sa, 0);
    /* only the other thread takes SIGUSR1 */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_t thread;
    pthread_create(&thread, 0, other, 0);
    pthread_sigmask(SIG_BLOCK, &usr1, 0);

    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 3;
    ev.sigev_value.sival_int = 4242;
    int chosen = CHOSEN;
    prctl(77, 1, 0, 0, 0); /* PR_TIMER_CREATE_RESTORE_IDS on: timer_create takes the id */
    syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &chosen);
    prctl(77, 0, 0, 0, 0);
    timer_t a = (timer_t)(long)chosen;

    ev.sigev_notify = SIGEV_NONE;
    timer_t b;
    timer_create(CLOCK_REALTIME, &ev, &b);

    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGUSR1;
    ev.sigev_value.sival_int = 777;
    struct timespec nap = {0, 1000000};
    while (!start_tid)
        nanosleep(&nap, 0);
    ev._sigev_un._tid = start_tid;
    timer_t c;
    timer_create(CLOCK_MONOTONIC, &ev, &c);

    struct itimerspec one_s = {{0, 0}, {3, 0}}, long_s = {{7, 0}, {100, 0}},
                      c_s = {{0, 0}, {3, 500000000}};
    timer_settime(a, 0, &one_s, 0);
    timer_settime(b, 0, &long_s, 0);
    timer_settime(c, 0, &c_s, 0);
    checkpoint();
    long long interval;
    long long left = left_ms(a, 0);
    CHECK(left > 0 && left <= 3000, "timer %d: %lld ms left (wanted up to 3000)", CHOSEN, left);
    left = left_ms(b, &interval);
    CHECK(left > 80000 && left <= 100000 && interval == 7000,
          "SIGEV_NONE timer: %lld ms left, every %lld ms", left, interval);
    CHECK(wait_for(&fired_count, 1) && fired_value == 4242 && fired_timerid == CHOSEN,
          "timer %d fired with sigev_value %d, si_timerid %d", CHOSEN, fired_value,
          fired_timerid);
    struct itimerspec again = {{0, 0}, {0, 200000000}};
    CHECK(timer_settime(a, 0, &again, 0) == 0, "timer_settime on timer %d", CHOSEN);
    CHECK(wait_for(&fired_count, 2), "timer %d fired again after timer_settime", CHOSEN);
    go = 1;
    pthread_join(thread, 0);
    CHECK(fired_tid && fired_tid == thread_tid && thread_value == 777,
          "SIGEV_THREAD_ID timer signalled the other thread (%d, wanted %d) with value %d",
          (int)fired_tid, (int)thread_tid, thread_value);
    return 0;
}
