#include <unistd.h>
#include "checkpoint.h"
/* The checkpoint is taken while blocked in read(): after the restore the read restarts. */
int main(void) {
    char buf[128];
    printf("waiting for input\n");
    fflush(stdout);
    ssize_t n = read(0, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("read %zd bytes: %s", n, buf);
    return 0;
}
