#include <signal.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "selfcheck.h"
/* alarm(4) set just before the checkpoint fires after the restore, not never, at the time it
 * had left: what getitimer shows right after the restore (4 s less the moment the debugger
 * took to reach the checkpoint and dump), within 0.3 s. */
static volatile sig_atomic_t fired;
static struct timespec fired_at;

static void on_alarm(int sig) {
    (void)sig;
    clock_gettime(CLOCK_MONOTONIC, &fired_at);
    fired = 1;
}

static double since(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

int main(void) {
    signal(SIGALRM, on_alarm);
    alarm(4);
    checkpoint();
    struct timespec start, now, nap = {0, 10000000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct itimerval left;
    getitimer(ITIMER_REAL, &left);
    double wanted = (double)left.it_value.tv_sec + (double)left.it_value.tv_usec / 1e6;
    CHECK(wanted > 0.5 && wanted <= 4, "%.3f s left of the alarm after the restore", wanted);
    do {
        nanosleep(&nap, 0);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (!fired && since(&start, &now) < 7);
    CHECK(fired, "SIGALRM arrived after the restore");
    double after = fired ? since(&start, &fired_at) : -1.0;
    CHECK(fired && after > wanted - 0.3 && after < wanted + 0.3,
          "it came %.3f s after the restore (wanted %.3f)", after, wanted);
    return 0;
}
