#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "selfcheck.h"
/* Socket pairs between a parent and its child, with data queued at the checkpoint: a stream
   pair queued both ways, a datagram pair with two datagrams queued (their boundaries kept). */
int main(void) {
    int st[2], dg[2], go[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
        pipe(go))
        return 1;
    pid_t child = fork();
    if (child == 0) {
        close(st[0]); close(dg[0]); close(go[1]);
        write(st[1], "to parent!", 10); /* the "!" stays queued at the parent's end */
        char c, buf[64];
        read(go[0], &c, 1); /* the checkpoint comes while the child waits here */
        ssize_t n = read(st[1], buf, sizeof buf);
        ssize_t a = recv(dg[1], buf + 32, 16, 0);
        ssize_t b = recv(dg[1], buf + 48, 16, 0);
        int ok = n == 8 && !memcmp(buf, "to child", 8) && a == 3 && b == 5 &&
                 !memcmp(buf + 32, "one", 3) && !memcmp(buf + 48, "three", 5);
        write(st[1], ok ? "Y" : "N", 1);
        _exit(0);
    }
    close(st[1]); close(dg[1]); close(go[0]);
    write(st[0], "to child", 8);
    send(dg[0], "one", 3, 0);
    send(dg[0], "three", 5, 0);
    char buf[16];
    ssize_t n = read(st[0], buf, 9);
    CHECK(n == 9 && !memcmp(buf, "to parent", 9), "the child's bytes before the checkpoint");
    checkpoint();
    n = read(st[0], buf, 1);
    CHECK(n == 1 && buf[0] == '!', "the byte queued at the parent's end");
    write(go[1], "g", 1);
    n = read(st[0], buf, 1);
    CHECK(n == 1 && buf[0] == 'Y', "the child got the queued stream bytes and datagrams");
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status), "the child ended");
    return 0;
}
