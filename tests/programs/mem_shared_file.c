#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "selfcheck.h"
/* A file opened O_RDWR, mapped MAP_SHARED with PROT_READ only: after the restore,
 * mprotect(PROT_WRITE) still succeeds and writes reach the file. */
int main(int argc, char **argv) {
    char temp[] = "/tmp/selfcheck-sharedXXXXXX";
    char *path = argc > 1 ? argv[1] : temp;
    int fd = argc > 1 ? open(path, O_RDWR | O_CREAT | O_TRUNC, 0600) : mkstemp(temp);
    char block[4096] = "file contents";
    write(fd, block, sizeof block);
    char *map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);

    checkpoint();

    CHECK(strcmp(map, "file contents") == 0, "shared file mapping reads the file");
    int rc = mprotect(map, 4096, PROT_READ | PROT_WRITE);
    CHECK(rc == 0, "mprotect(PROT_WRITE) on the shared file mapping");
    if (rc == 0) {
        strcpy(map, "written through the mapping");
        msync(map, 4096, MS_SYNC);
    }
    fd = open(path, O_RDONLY);
    char back[64] = "";
    pread(fd, back, sizeof back - 1, 0);
    close(fd);
    CHECK(strcmp(back, "written through the mapping") == 0, "the write reached the file");
    unlink(path);
    return 0;
}
