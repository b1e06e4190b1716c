#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "checkpoint.h"
/* A private file mapping: written pages come from the image, the rest from the file. */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 1;
    char *map = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    memcpy(map + 4096, "changed in memory", 17);
    checkpoint();
    printf("page0: %.20s\n", map);
    printf("page1: %.20s\n", map + 4096);
    printf("page2: %.20s\n", map + 2 * 4096);
    memcpy(map + 2 * 4096, "changed after", 13);
    printf("page2 now: %.20s\n", map + 2 * 4096);
    return 0;
}
