#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "selfcheck.h"
/* A FIFO (argv[1]) open for reading (non-blocking) and for writing, bytes buffered in it:
 * after the restore the bytes are read back from the same FIFO. */
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int r = open(argv[1], O_RDONLY | O_NONBLOCK);
    int w = open(argv[1], O_WRONLY);
    char buf[64];
    if (r < 0 || w < 0 || write(w, "through the fifo", 16) != 16) return 2;
    checkpoint();
    ssize_t n = read(r, buf, sizeof buf);
    CHECK(n == 16 && memcmp(buf, "through the fifo", 16) == 0, "buffered bytes back (%zd)", n);
    CHECK((fcntl(r, F_GETFL) & (O_NONBLOCK | O_ACCMODE)) == (O_NONBLOCK | O_RDONLY) &&
          (fcntl(w, F_GETFL) & (O_NONBLOCK | O_ACCMODE)) == O_WRONLY, "ends and flags kept");
    CHECK(write(w, "x", 1) == 1 && read(r, buf, 1) == 1, "the same FIFO still");
    return 0;
}
