/* For tests/test_storecheck.py: 192 pages of noise (stored raw in a checkpoint store: they do
   not compress) and 64 pages of text (compressed), then a checkpoint; afterwards both are
   summed and printed, so a page restored wrong changes the output. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include "checkpoint.h"

#define NOISE (192 * 4096)
#define TEXT (64 * 4096)

static uint64_t sum(const uint8_t *data, size_t size) {
    uint64_t total = 0;
    for (size_t i = 0; i < size; i++) total = total * 31 + data[i];
    return total;
}

int main(void) {
    uint8_t *noise = mmap(0, NOISE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *text = mmap(0, TEXT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < NOISE; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(noise + i, &x, 8);
    }
    for (size_t i = 0; i < TEXT; i += 32) snprintf(text + i, 32, "line %zu of the text", i);
    checkpoint();
    printf("noise %llx\ntext %llx\n", (unsigned long long)sum(noise, NOISE),
           (unsigned long long)sum((uint8_t *)text, TEXT));
    for (int round = 0; round < 3; round++) printf("round %d\n", round);
    return 0;
}
