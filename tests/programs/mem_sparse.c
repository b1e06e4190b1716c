#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "selfcheck.h"
/* Large shared objects holding little: only their data is dumped (SEEK_DATA on
 * /proc/PID/map_files, when the debugger may open it), and data written through the memfd
 * descriptor alone, never through a mapping, comes back too. */
int main(void) {
    size_t size = 1UL << 30;
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    strcpy(p + (512UL << 20), "middle");
    int fd = memfd_create("sparse", 0);
    ftruncate(fd, size);
    pwrite(fd, "via fd", 6, 300UL << 20);   /* never touched through the mapping */
    char *q = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    checkpoint();
    CHECK(strcmp(p + (512UL << 20), "middle") == 0, "sparse shared anonymous");
    CHECK(memcmp(q + (300UL << 20), "via fd", 6) == 0, "memfd data written through the fd");
    return 0;
}
