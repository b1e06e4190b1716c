#include "checkpoint.h"
/* A plain counting loop, for breakpoints and stepping after the restore. */
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    int total = 0;
    for (int i = 0; i < 6; i++) {
        if (i == 3) checkpoint();
        total += i;
        printf("iteration %d total %d\n", i, total); /* loop body */
    }
    return 0;
}
