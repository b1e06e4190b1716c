#include <signal.h>
#include <time.h>
#include <unistd.h>
#include "selfcheck.h"
/* alarm(3) set just before the checkpoint fires after the restore, not never, and not before
 * the time it had left at the dump (the debugger takes a moment to run to the checkpoint and
 * dump: 3 s less that moment, 1.5 s at least). */
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
    alarm(3);
    checkpoint();
    struct timespec start, now, nap = {0, 10000000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        nanosleep(&nap, 0);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (!fired && since(&start, &now) < 6);
    CHECK(fired, "SIGALRM arrived after the restore");
    double after = since(&start, &fired_at);
    CHECK(fired && after > 1.5 && after < 3.2, "it came %.3f s after the restore (wanted 1.5-3)",
          fired ? after : -1.0);
    return 0;
}
