#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <time.h>
#include "selfcheck.h"
/* Timers whose signal is pending (blocked) at the checkpoint: a one-shot one is delivered
 * once, not twice (the timer stays disarmed), and a periodic one goes on ticking. */
static volatile int once_count, once_value, tick_count;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    if (sig == SIGRTMIN + 4) {
        once_count++;
        once_value = info->si_value.sival_int;
    } else {
        tick_count++;
    }
}

int main(void) {
    int once_sig = SIGRTMIN + 4, tick_sig = SIGRTMIN + 5;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(once_sig, &sa, 0);
    sigaction(tick_sig, &sa, 0);
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, once_sig);
    sigaddset(&both, tick_sig);
    sigprocmask(SIG_BLOCK, &both, 0);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = once_sig;
    ev.sigev_value.sival_int = 99;
    timer_t once, tick;
    timer_create(CLOCK_MONOTONIC, &ev, &once);
    ev.sigev_signo = tick_sig;
    timer_create(CLOCK_MONOTONIC, &ev, &tick);
    struct itimerspec soon = {{0, 0}, {0, 1000000}}, every = {{0, 300000000}, {0, 1000000}};
    timer_settime(once, 0, &soon, 0);
    timer_settime(tick, 0, &every, 0);
    struct timespec nap = {0, 50000000};
    nanosleep(&nap, 0);
    checkpoint();
    struct itimerspec left;
    timer_gettime(once, &left);
    CHECK(left.it_value.tv_sec == 0 && left.it_value.tv_nsec <= 1,
          "the one-shot timer is spent (%ld ns left)", left.it_value.tv_nsec);
    sigprocmask(SIG_UNBLOCK, &both, 0);
    struct timespec wait = {1, 0};
    while (nanosleep(&wait, &wait) != 0) {
    }
    CHECK(once_count == 1 && once_value == 99, "its pending signal came once (%d), value %d",
          once_count, once_value);
    CHECK(tick_count >= 3, "the periodic timer ticks on: %d signals in 1 s", tick_count);
    return 0;
}
