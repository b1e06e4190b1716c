#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "selfcheck.h"
/* A pipe whose write end is in a child process: it cannot come back. Restored with
 * --accept-loss, the read end gives end of file (not EBADF, not the debugger's data). */
int main(void) {
    int p[2];
    if (pipe(p) != 0) return 2;
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        sleep(60);
        _exit(0);
    }
    close(p[1]);
    checkpoint();
    char c;
    ssize_t n = read(p[0], &c, 1);
    CHECK(n == 0, "the lost pipe reads end of file (%zd, errno %d)", n, n < 0 ? errno : 0);
    kill(child, SIGKILL);
    return 0;
}
