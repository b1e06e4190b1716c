#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "selfcheck.h"
/* A parent blocked in waitpid at the checkpoint for a child that exits after the restore; a
   zombie child reaped after it; a counter in shared anonymous memory that parent and child
   both increment; the child's pid as fork gave it. */
int main(void) {
    volatile long *counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int report[2];
    if (counter == MAP_FAILED || pipe(report))
        return 1;
    *counter = 1;
    pid_t zombie = fork();
    if (zombie == 0)
        _exit(5);
    pid_t killed = fork();
    if (killed == 0) {
        raise(SIGUSR1); /* ends it: a zombie killed by a signal */
        _exit(9);
    }
    pid_t late = fork();
    if (late == 0) {
        setsid(); /* its own session and process group */
        close(report[0]);
        __atomic_add_fetch(counter, 10, __ATOMIC_SEQ_CST);
        sleep(3); /* the checkpoint comes meanwhile */
        __atomic_add_fetch(counter, 100, __ATOMIC_SEQ_CST);
        pid_t me[3] = {getpid(), getsid(0), getpgid(0)};
        write(report[1], me, sizeof me);
        _exit(7);
    }
    close(report[1]);
    siginfo_t info;
    waitid(P_PID, zombie, &info, WEXITED | WNOWAIT); /* a zombie from here on */
    waitid(P_PID, killed, &info, WEXITED | WNOWAIT);
    __atomic_add_fetch(counter, 1000, __ATOMIC_SEQ_CST);
    while (getsid(late) != late) /* the child's setsid */
        usleep(1000);
    printf("waiting\n");
    fflush(stdout);
    int status;
    pid_t got = waitpid(late, &status, 0); /* the checkpoint is taken in here */
    CHECK(got == late && WIFEXITED(status) && WEXITSTATUS(status) == 7,
          "waitpid gets the late child's status (%d, %#x)", (int)got, status);
    got = waitpid(zombie, &status, 0);
    CHECK(got == zombie && WIFEXITED(status) && WEXITSTATUS(status) == 5,
          "the zombie is reaped with its status (%d, %#x)", (int)got, status);
    got = waitpid(killed, &status, 0);
    CHECK(got == killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGUSR1,
          "the zombie killed by a signal is reaped with it (%d, %#x)", (int)got, status);
    CHECK(*counter == 1111, "the shared counter has every increment (%ld)", *counter);
    pid_t reported[3] = {0};
    read(report[0], reported, sizeof reported);
    CHECK(reported[1] == reported[0] && reported[2] == reported[0],
          "the child leads its own session and group (%d %d %d)", (int)reported[0],
          (int)reported[1], (int)reported[2]);
    printf("child pid %s\n", reported[0] == late ? "kept" : "changed");
    return 0;
}
