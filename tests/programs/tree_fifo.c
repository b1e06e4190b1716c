#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "selfcheck.h"
/* A FIFO (argv[1]) between a parent (reading) and its child (writing), bytes in it at the
   checkpoint. */
int main(int argc, char **argv) {
    int go[2];
    if (argc < 2 || pipe(go) || mkfifo(argv[1], 0600))
        return 1;
    pid_t child = fork();
    if (child == 0) {
        close(go[1]);
        int out = open(argv[1], O_WRONLY);
        write(out, "abc", 3);
        char c;
        read(go[0], &c, 1); /* the checkpoint comes while the child waits here */
        write(out, "d", 1);
        _exit(0);
    }
    close(go[0]);
    int in = open(argv[1], O_RDONLY);
    char buf[8] = {0};
    read(in, buf, 1);
    CHECK(buf[0] == 'a', "the first byte before the checkpoint");
    checkpoint();
    ssize_t n = read(in, buf, 2);
    CHECK(n == 2 && !memcmp(buf, "bc", 2), "the bytes left in the FIFO (%d)", (int)n);
    write(go[1], "g", 1);
    n = read(in, buf, 2);
    CHECK(n == 1 && buf[0] == 'd', "the child's write after the restore (%d)", (int)n);
    n = read(in, buf, 2);
    CHECK(n == 0, "end of file once the child is gone (%d)", (int)n);
    int status;
    waitpid(child, &status, 0);
    unlink(argv[1]);
    return 0;
}
