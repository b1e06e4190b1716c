#include <signal.h>
#include <string.h>
#include <unistd.h>
#include "selfcheck.h"
/* The test adds to the image a SIGUSR1 pending for the process and a SIGUSR2 pending for the
 * main thread, neither blocked (as when they arrive while the process is stopped): each is
 * delivered once, with its siginfo, as the restore ends, its handler's frame clear of the
 * program's stack. */
static volatile int usr1_count, usr1_value, usr1_pid, usr2_count, usr2_value;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    if (sig == SIGUSR1) {
        usr1_count++;
        usr1_value = info->si_value.sival_int;
        usr1_pid = info->si_pid;
    } else {
        usr2_count++;
        usr2_value = info->si_value.sival_int;
    }
}

int main(void) {
    unsigned char pattern[4096];
    for (unsigned i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)(i * 13 + 5);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, 0);
    sigaction(SIGUSR2, &sa, 0);
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    checkpoint();
    int bad = 0;
    for (unsigned i = 0; i < sizeof pattern; i++)
        bad += pattern[i] != (unsigned char)(i * 13 + 5);
    CHECK(bad == 0, "the stack holds what it held (%d bytes differ)", bad);
    CHECK(usr1_count == 1 && usr1_value == 31337 && usr1_pid == 4242,
          "SIGUSR1 delivered once (%d), value %d from pid %d", usr1_count, usr1_value, usr1_pid);
    CHECK(usr2_count == 1 && usr2_value == 27, "SIGUSR2 delivered once (%d), value %d",
          usr2_count, usr2_value);
    return 0;
}
