#include <signal.h>
#include <string.h>
#include <time.h>
#include "selfcheck.h"
/* glibc's SIGEV_THREAD timer: a helper thread of glibc's waits for the kernel's
 * SIGEV_THREAD_ID signal and starts the callback. Armed before the checkpoint, it fires
 * after the restore, with its sigev_value, and again after timer_settime. */
static volatile int calls, last_value;

static void callback(union sigval value) {
    last_value = value.sival_int;
    calls++;
}

static int wait_for(int wanted) {
    struct timespec nap = {0, 5000000};
    for (int i = 0; i < 1600 && calls < wanted; i++)
        nanosleep(&nap, 0);
    return calls >= wanted;
}

int main(void) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = callback;
    ev.sigev_value.sival_int = 606;
    timer_t timer;
    timer_create(CLOCK_MONOTONIC, &ev, &timer);
    struct itimerspec soon = {{0, 0}, {3, 0}};
    timer_settime(timer, 0, &soon, 0);
    checkpoint();
    CHECK(wait_for(1) && last_value == 606, "the callback ran after the restore, value %d",
          last_value);
    struct itimerspec again = {{0, 0}, {0, 100000000}};
    timer_settime(timer, 0, &again, 0);
    CHECK(wait_for(2), "and again after timer_settime (%d calls)", calls);
    return 0;
}
