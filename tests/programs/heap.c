#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "checkpoint.h"
/* Heap and brk growth after the restore: malloc'd data survives, and new, larger blocks keep
   coming from brk() and mmap. */
int main(void) {
    char *kept = malloc(64);
    strcpy(kept, "kept across the checkpoint");
    char *base = sbrk(0);
    for (int i = 0; i < 8; i++) {
        if (i == 4) checkpoint();
        char *block = malloc(4096 * (i + 1));
        memset(block, 'a' + i, 4096 * (i + 1));
        char *big = malloc(1 << 20); /* from mmap */
        big[(1 << 20) - 1] = (char)i;
        void *grown = sbrk(8192);
        memset(grown, i, 8192);
        printf("round %d: %s block=%c big=%d brk_grew=%d\n", i, kept, block[4095 * (i + 1)],
               big[(1 << 20) - 1], (char *)sbrk(0) > base);
    }
    return 0;
}
