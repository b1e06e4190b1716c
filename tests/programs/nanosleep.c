#include <time.h>
#include "checkpoint.h"
/* The checkpoint is taken inside nanosleep(): after the restore the sleep ends normally. */
int main(void) {
    printf("sleeping\n");
    fflush(stdout);
    struct timespec ts = {.tv_sec = 1, .tv_nsec = 0};
    int rc = nanosleep(&ts, 0);
    printf("nanosleep returned %d\n", rc);
    return 0;
}
