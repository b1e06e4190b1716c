#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>
#include "checkpoint.h"
/* Interrupted in pselect6 by a signal the debugger keeps from it: the call must restart. */
int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    printf("before\n");
    if (argc > 1 && fork() == 0) {
        usleep(150000);
        kill(getppid(), SIGUSR1);
        _exit(0);
    }
    struct timeval tv = {0, 600000};
    int r = select(0, 0, 0, 0, &tv);
    printf("select=%d errno=%d\n", r, r < 0 ? errno : 0);
    printf("after\n");
    return 0;
}
