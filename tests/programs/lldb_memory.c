/* Three stops at stage() for tests/test_lldb_memory.py: LLDB's expression memory across
 * in-place restores. At stage 1 `region` is mapped (at the top of the highest free gap,
 * where the first page LLDB maps for an expression later lands); from stage 2 it is not. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

volatile int at_stage;
char *region;

void stage(int n) { at_stage = n; }

int main(void) {
    region = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED)
        return 1;
    strcpy(region, "mapped at stage 1");
    stage(1);
    munmap(region, 4 * 4096);
    stage(2);
    stage(3);
    printf("ended at stage %d\n", at_stage);
    return 0;
}
