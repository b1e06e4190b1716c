/* For scripts/bench_store: a heap of N MiB (argv[1]) of typical, compressible data (small
   integers and text), then ROUNDS checkpoints with 1% of its pages changed before each. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "checkpoint.h"

#define ROUNDS 10

int main(int argc, char **argv) {
    size_t size = (size_t)atol(argc > 1 ? argv[1] : "64") << 20, pages = size / 4096;
    uint64_t *data = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < size / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        /* half the words small counters, a quarter pointers into the heap, a quarter text */
        switch (i & 3) {
        case 0: case 1: data[i] = x & 0xFFFF; break;
        case 2: data[i] = (uint64_t)(uintptr_t)data + (x & (size - 1) & ~7ull); break;
        default: memcpy(&data[i], "name_   " + 0, 8); ((char *)&data[i])[5] = 'a' + x % 26;
        }
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t n = 0; n < pages / 100; n++) {  /* 1% of the pages, one word each */
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            data[(x % pages) * 512 + x % 512] = x;
        }
        checkpoint();
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < size / 8; i++) sum = sum * 31 + data[i];
    printf("%zu MiB checksum %llx\n", size >> 20, (unsigned long long)sum);
    return 0;
}
