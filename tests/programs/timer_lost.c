#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include "selfcheck.h"
/* A timer on the CPU clock of the thread that created it, in a process with two threads:
 * /proc/PID/timers does not say which thread, so it cannot come back (a loss the restore
 * names); the other timer comes back. */
static volatile int go;

static void *other(void *arg) {
    (void)arg;
    struct timespec nap = {0, 5000000};
    while (!go)
        nanosleep(&nap, 0);
    return 0;
}

int main(void) {
    pthread_t thread;
    pthread_create(&thread, 0, other, 0);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_NONE;
    timer_t cpu, kept;
    timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &cpu);
    timer_create(CLOCK_MONOTONIC, &ev, &kept);
    struct itimerspec spec = {{0, 0}, {60, 0}};
    timer_settime(cpu, 0, &spec, 0);
    timer_settime(kept, 0, &spec, 0);
    checkpoint();
    struct itimerspec now;
    CHECK(timer_gettime(kept, &now) == 0 && now.it_value.tv_sec > 30,
          "the CLOCK_MONOTONIC timer is back: %ld s left", (long)now.it_value.tv_sec);
    go = 1;
    pthread_join(thread, 0);
    return 0;
}
