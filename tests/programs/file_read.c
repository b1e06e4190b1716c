#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "checkpoint.h"
/* Reads half of a file before the checkpoint and the rest after it; the descriptor, its
   offset, a directory stream, /dev/null and the working directory come back, and the pipe's
   two ends (binfmt_img/fdkinds/pipe.py). */
int main(int argc, char **argv) {
    char buf[64];
    int fd = open(argv[1], O_RDONLY);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int pipes[2];
    if (pipe(pipes) != 0 || chdir(argv[2]) != 0)
        return 1;
    DIR *dir = opendir(".");
    long total = 0, lines = 0;
    ssize_t n;
    while (total < 3000 && (n = read(fd, buf, sizeof buf)) > 0) {
        total += n;
        lines += memchr(buf, '\n', n) != 0;
    }
    printf("first half: %ld bytes, offset %ld\n", total, (long)lseek(fd, 0, SEEK_CUR));
    fflush(stdout);
    checkpoint();
    while ((n = read(fd, buf, sizeof buf)) > 0)
        total += n;
    printf("whole file: %ld bytes, fd=%d\n", total, fd);
    printf("/dev/null takes writes=%d cloexec=%d\n", write(null, "x", 1) == 1,
           (fcntl(null, F_GETFD) & FD_CLOEXEC) != 0);
    int entries = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != 0)
        entries += strcmp(entry->d_name, "marker.txt") == 0;
    int relative = open("marker.txt", O_RDONLY); /* the working directory came back */
    n = relative >= 0 ? read(relative, buf, sizeof buf - 1) : 0;
    buf[n > 0 ? n : 0] = 0;
    printf("directory lists marker=%d, marker says %s", entries, buf);
    return 0;
}
