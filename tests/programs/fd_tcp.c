#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "selfcheck.h"
/* A TCP connection to a listener the test owns cannot come back: with --accept-loss its
 * descriptor reads end of file. */
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (argc < 2 || connect(s, (struct sockaddr *)&to, sizeof to) != 0) return 2;
    checkpoint();
    char c;
    ssize_t n = read(s, &c, 1);
    CHECK(n == 0, "the lost connection reads end of file (%zd, errno %d)", n, n < 0 ? errno : 0);
    return 0;
}
