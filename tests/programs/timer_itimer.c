#include <signal.h>
#include <sys/time.h>
#include <time.h>
#include "selfcheck.h"
/* An ITIMER_REAL with an interval ticks on after the restore; ITIMER_VIRTUAL and
 * ITIMER_PROF keep their values and intervals. */
static volatile sig_atomic_t ticks;

static void on_tick(int sig) {
    (void)sig;
    ticks++;
}

int main(void) {
    signal(SIGALRM, on_tick);
    struct itimerval real = {{0, 200000}, {2, 0}};
    struct itimerval virt = {{7, 0}, {50, 0}};
    struct itimerval prof = {{9, 500000}, {60, 0}};
    setitimer(ITIMER_REAL, &real, 0);
    setitimer(ITIMER_VIRTUAL, &virt, 0);
    setitimer(ITIMER_PROF, &prof, 0);
    checkpoint();
    struct itimerval got;
    getitimer(ITIMER_VIRTUAL, &got);
    CHECK(got.it_interval.tv_sec == 7 && got.it_value.tv_sec >= 49, "ITIMER_VIRTUAL %lds every %lds",
          (long)got.it_value.tv_sec, (long)got.it_interval.tv_sec);
    getitimer(ITIMER_PROF, &got);
    CHECK(got.it_interval.tv_sec == 9 && got.it_interval.tv_usec == 500000
          && got.it_value.tv_sec >= 59, "ITIMER_PROF %lds every %ld.%06lds",
          (long)got.it_value.tv_sec, (long)got.it_interval.tv_sec,
          (long)got.it_interval.tv_usec);
    getitimer(ITIMER_REAL, &got);
    long left_us = got.it_value.tv_sec * 1000000L + got.it_value.tv_usec;
    CHECK(got.it_interval.tv_usec == 200000 && left_us > 300000 && left_us <= 2000000, "ITIMER_REAL %ld.%06lds every 0.%06lds",
          (long)got.it_value.tv_sec, (long)got.it_value.tv_usec, (long)got.it_interval.tv_usec);
    struct timespec nap = {3, 0};
    while (nanosleep(&nap, &nap) != 0) {
    }
    /* the first tick within 2 s, then one every 0.2 s */
    CHECK(ticks >= 5 && ticks <= 15, "%d ticks in 3 s (wanted 5-15)", (int)ticks);
    return 0;
}
