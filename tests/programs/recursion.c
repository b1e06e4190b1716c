#include "checkpoint.h"
/* Deep recursion: the checkpoint is taken 20000 frames down, and the sums come back up. */
static long descend(int depth) {
    volatile char frame[64];
    frame[0] = (char)depth;
    if (depth == 0) {
        checkpoint();
        return 0;
    }
    long below = descend(depth - 1);
    if (depth % 5000 == 0) printf("depth %d below=%ld\n", depth, below);
    return below + depth + frame[0] - (char)depth;
}
int main(void) {
    printf("sum %ld\n", descend(20000));
    return 0;
}
