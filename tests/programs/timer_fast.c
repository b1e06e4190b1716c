#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include "selfcheck.h"
/* An ITIMER_REAL ticking every millisecond, its SIGALRM not blocked: it fires during the dump
 * and the restore's last steps too. The handler's frames must not land on the program's
 * stack, and the ticks go on after the restore. */
static volatile int ticks;

static void on_tick(int sig) {
    (void)sig;
    ticks++;
}

int main(void) {
    unsigned char pattern[4096];
    for (unsigned i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)(i * 7 + 3);
    signal(SIGALRM, on_tick);
    struct itimerval every_ms = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &every_ms, 0);
    checkpoint();
    int bad = 0;
    for (unsigned i = 0; i < sizeof pattern; i++)
        bad += pattern[i] != (unsigned char)(i * 7 + 3);
    CHECK(bad == 0, "the stack holds what it held (%d bytes differ)", bad);
    int before = ticks;
    struct timespec nap = {0, 200000000};
    while (nanosleep(&nap, &nap) != 0) {
    }
    CHECK(ticks - before > 20, "%d ticks in 0.2 s after the restore", ticks - before);
    return 0;
}
