#include <stdlib.h>
#include <string.h>
#include "checkpoint.h"
/* For debugging after the restore: a call chain to see in bt, a helper to step into and finish
   from, a libc call to break in. */
static int helper(int x) {
    int doubled = x * 2;
    return doubled + 1;
}
static void inner(int round) {
    if (round == 2) checkpoint();
}
int main(void) {
    int total = 0;
    for (int round = 0; round < 4; round++) {
        inner(round);
        total += helper(round);
        char *s = strdup("copy");
        printf("round %d total %d %s\n", round, total, s);
        free(s);
    }
    return 0;
}
