#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "selfcheck.h"
/* Unix socket pairs with data queued: a stream pair with bytes both ways, a seqpacket pair
 * with two messages. After the restore each end reads what was queued for it, message
 * boundaries kept, and the pairs still talk. */
int main(void) {
    int s[2], q[2];
    char buf[128];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) != 0) return 2;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, q) != 0) return 2;
    if (write(s[0], "to the right", 12) != 12 || write(s[1], "to the left", 11) != 11) return 2;
    if (send(q[0], "first", 5, 0) != 5 || send(q[0], "second message", 14, 0) != 14) return 2;
    checkpoint();
    ssize_t n = read(s[1], buf, sizeof buf);
    CHECK(n == 12 && memcmp(buf, "to the right", 12) == 0, "stream bytes one way (%zd)", n);
    n = read(s[0], buf, sizeof buf);
    CHECK(n == 11 && memcmp(buf, "to the left", 11) == 0, "stream bytes the other way (%zd)", n);
    n = read(s[0], buf, sizeof buf);
    CHECK(n < 0 && errno == EAGAIN, "then empty, non-blocking");
    n = recv(q[1], buf, sizeof buf, 0);
    CHECK(n == 5 && memcmp(buf, "first", 5) == 0, "first message alone (%zd)", n);
    n = recv(q[1], buf, sizeof buf, 0);
    CHECK(n == 14 && memcmp(buf, "second message", 14) == 0, "second message (%zd)", n);
    int type = 0;
    socklen_t len = sizeof type;
    getsockopt(q[0], SOL_SOCKET, SO_TYPE, &type, &len);
    CHECK(type == SOCK_SEQPACKET, "seqpacket type kept");
    CHECK(write(q[1], "back", 4) == 4 && read(q[0], buf, sizeof buf) == 4, "still a pair");
    return 0;
}
