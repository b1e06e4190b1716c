#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "selfcheck.h"
/* A terminal opened above fd 2 (argv[1], a pty the test holds): after the restore it is the
 * same terminal, still writable. */
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDWR | O_NOCTTY);
    if (fd < 0 || write(fd, "before\n", 7) != 7) return 2;
    checkpoint();
    const char *name = ttyname(fd);
    CHECK(isatty(fd) && name && strcmp(name, argv[1]) == 0, "the same terminal (%s)",
          name ? name : "none");
    CHECK(write(fd, "after\n", 6) == 6, "still writable");
    return 0;
}
