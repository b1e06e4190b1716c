#include <time.h>
#include <sys/time.h>
#include "checkpoint.h"
/* clock_gettime and gettimeofday go through the vDSO; they must still work and move forward. */
int main(void) {
    struct timespec before, after, real;
    clock_gettime(CLOCK_MONOTONIC, &before);
    printf("monotonic before ok=%d\n", before.tv_sec > 0 || before.tv_nsec > 0);
    checkpoint();
    for (int i = 0; i < 3; i++) {
        clock_gettime(CLOCK_MONOTONIC, &after);
        clock_gettime(CLOCK_REALTIME, &real);
        struct timeval tv;
        gettimeofday(&tv, 0);
        printf("after %d: realtime sane=%d gettimeofday sane=%d monotonic runs=%d\n", i,
               real.tv_sec > 1700000000, tv.tv_sec > 1700000000, after.tv_sec >= 0);
    }
    return 0;
}
