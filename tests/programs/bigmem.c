#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "checkpoint.h"
/* N MiB of non-zero data in one anonymous mapping, checksummed after the checkpoint. */
int main(int argc, char **argv) {
    size_t size = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
    uint64_t *data = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < size / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        data[i] = x | 1;
    }
    checkpoint();
    uint64_t sum = 0;
    for (size_t i = 0; i < size / 8; i++) sum = sum * 31 + data[i];
    printf("%zu MiB checksum %llx\n", size >> 20, (unsigned long long)sum);
    return 0;
}
