/* img-diff: globals, a static, a heap block and a stack frame that change between two
 * checkpoints (the test dumps at each and compares). */
#include <stdlib.h>
#include <string.h>
#include "checkpoint.h"

struct point {
    int x, y;
};

int counter = 1;
struct point origin = {3, 4};
long table[4] = {10, 20, 30, 40};
static int hidden = 7;
char *block;

static int __attribute__((noinline)) work(int round) {
    volatile int local[8];
    for (int i = 0; i < 8; i++)
        local[i] = round * 100 + i;
    checkpoint();
    return local[3];
}

int main(void) {
    block = malloc(256);
    memset(block, 'a', 256);
    work(1);
    counter = 5;
    origin.y = 9;
    table[2] = 33;
    hidden = 8;
    memset(block + 64, 'b', 16);
    work(2);
    return 0;
}
