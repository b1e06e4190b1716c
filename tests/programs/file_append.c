#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "checkpoint.h"
/* Appends to a log through a descriptor (O_APPEND) and a stdio stream, whose buffer holds
   unwritten lines at the checkpoint; the log ends up as in an uninterrupted run. */
int main(int argc, char **argv) {
    char line[80];
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
    FILE *log = fopen(argv[1], "a");
    for (int i = 0; i < 10; i++) {
        if (i == 5)
            checkpoint();
        int n = snprintf(line, sizeof line, "fd line %d\n", i);
        write(fd, line, n);
        fprintf(log, "stream line %d\n", i);
        if (i % 2)
            fflush(log);
    }
    fclose(log);
    printf("log written\n");
    return 0;
}
