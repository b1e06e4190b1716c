#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "selfcheck.h"
/* A pipe with bytes buffered in it, non-blocking and close-on-exec, and a pipe whose write
 * end was closed: after the restore the bytes are read back, then end of file. */
int main(void) {
    int p[2], q[2];
    char buf[256];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0 || pipe(q) != 0) return 2;
    if (write(p[1], "hello through the pipe", 22) != 22) return 2;
    if (write(q[1], "last words", 10) != 10) return 2;
    close(q[1]);
    checkpoint();
    ssize_t n = read(p[0], buf, sizeof buf);
    CHECK(n == 22 && memcmp(buf, "hello through the pipe", 22) == 0,
          "buffered bytes read back (%zd, errno %d)", n, n < 0 ? errno : 0);
    n = read(p[0], buf, sizeof buf);
    CHECK(n < 0 && errno == EAGAIN, "non-blocking, now empty (%zd)", n);
    CHECK(fcntl(p[1], F_GETFD) == FD_CLOEXEC && (fcntl(p[1], F_GETFL) & O_NONBLOCK),
          "flags kept");
    CHECK(write(p[1], "again", 5) == 5 && read(p[0], buf, 5) == 5 && !memcmp(buf, "again", 5),
          "the two ends still joined");
    n = read(q[0], buf, sizeof buf);
    CHECK(n == 10 && memcmp(buf, "last words", 10) == 0, "the closed pipe's bytes (%zd)", n);
    CHECK(read(q[0], buf, sizeof buf) == 0, "then end of file");
    return 0;
}
