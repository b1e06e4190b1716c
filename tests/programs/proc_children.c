#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "selfcheck.h"
/* A child that sleeps, named "napper", exists at the checkpoint. It is not in the image:
   restored with --accept-loss, waitpid finds no child. */
int main(void) {
    int ready[2];
    pipe(ready);
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        prctl(PR_SET_NAME, "napper");
        close(ready[0]);
        close(ready[1]);
        sleep(100);
        _exit(0);
    }
    close(ready[1]);
    char c;
    read(ready[0], &c, 1); /* the child closed its end: it is named by now */
    close(ready[0]);
    printf("child %d\n", (int)child);
    fflush(stdout);
    checkpoint();
    int status;
    pid_t got = waitpid(child, &status, WNOHANG);
    CHECK(got == -1 && errno == ECHILD, "waitpid: no child after the restore (%d)", (int)got);
    return 0;
}
