#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "selfcheck.h"
/* A parent and two workers in a ring of pipes: the parent sends numbers to worker 1, which
   doubles them for worker 2, which adds one and sends them back. The checkpoint comes with
   numbers in flight; after the restore the output is exactly an uninterrupted run's. */
static void worker(int in, int out, int times, int plus) {
    int n;
    while (read(in, &n, sizeof n) == sizeof n) {
        n = n * times + plus;
        if (write(out, &n, sizeof n) != sizeof n)
            _exit(2);
    }
    _exit(0);
}

int main(void) {
    int a[2], b[2], c[2];
    if (pipe(a) || pipe(b) || pipe(c))
        return 1;
    pid_t w1 = fork();
    if (w1 == 0) {
        close(a[1]); close(b[0]); close(c[0]); close(c[1]);
        worker(a[0], b[1], 2, 0);
    }
    pid_t w2 = fork();
    if (w2 == 0) {
        close(a[0]); close(a[1]); close(b[1]); close(c[0]);
        worker(b[0], c[1], 1, 1);
    }
    close(a[0]); close(b[0]); close(b[1]); close(c[1]);
    int n, sum = 0;
    for (int i = 1; i <= 10; i++)
        write(a[1], &i, sizeof i);
    read(c[0], &n, sizeof n); /* both workers run */
    printf("first %d\n", n);
    fflush(stdout);
    checkpoint();
    for (int i = 11; i <= 20; i++)
        write(a[1], &i, sizeof i);
    close(a[1]);
    int count = 1;
    sum = n;
    while (read(c[0], &n, sizeof n) == sizeof n) {
        sum += n;
        count++;
    }
    printf("%d results, sum %d\n", count, sum);
    int s1, s2;
    CHECK(waitpid(w1, &s1, 0) == w1 && WIFEXITED(s1) && WEXITSTATUS(s1) == 0, "worker 1 ended");
    CHECK(waitpid(w2, &s2, 0) == w2 && WIFEXITED(s2) && WEXITSTATUS(s2) == 0, "worker 2 ended");
    return 0;
}
