#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "selfcheck.h"
/* A memfd with contents, an offset and seals (no growing, no shrinking): all back. */
int main(void) {
    int fd = memfd_create("selfcheck-memfd", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    char buf[64];
    if (fd < 0 || write(fd, "contents of the memfd", 21) != 21) return 2;
    if (lseek(fd, 3, SEEK_SET) != 3) return 2;
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) != 0) return 2;
    checkpoint();
    ssize_t n = read(fd, buf, sizeof buf);
    CHECK(n == 18 && memcmp(buf, "tents of the memfd", 18) == 0, "contents from offset 3 (%zd)", n);
    CHECK(fcntl(fd, F_GET_SEALS) == (F_SEAL_GROW | F_SEAL_SHRINK), "seals kept (%#x)",
          fcntl(fd, F_GET_SEALS));
    CHECK(ftruncate(fd, 100) < 0 && errno == EPERM, "still sealed against growing");
    char link[128] = {0};
    snprintf(buf, sizeof buf, "/proc/self/fd/%d", fd);
    readlink(buf, link, sizeof link - 1);
    CHECK(strcmp(link, "/memfd:selfcheck-memfd (deleted)") == 0, "name kept (%s)", link);
    CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "close-on-exec kept");
    return 0;
}
