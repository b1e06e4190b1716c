#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "selfcheck.h"
/* Restored from files found elsewhere (--exe, --map, --sysroot, a packed image): the heap,
   a global, libc and a mapped data file (argv[1], optional) are as they were. VARIANT makes
   another build of it: other code, another build-id. */
#ifndef VARIANT
#define VARIANT 1
#endif
static int counter = 40;

static void __attribute__((noinline)) inner_function(char *kept, const char *data) {
    counter++;
    checkpoint();
    counter++;
    CHECK(counter == 42 + VARIANT - 1, "counter %d", counter);
    CHECK(strcmp(kept, "kept on the heap") == 0, "heap string '%s'", kept);
    char text[64];
    snprintf(text, sizeof text, "%d-%s", counter, "libc");
    CHECK(strcmp(text, "42-libc") == 0, "libc snprintf '%s'", text);
    if (data)
        CHECK(memcmp(data, "identity-data", 13) == 0, "mapped data file '%.13s'", data);
}

static void __attribute__((noinline)) outer_function(const char *data) {
    char *kept = malloc(64);
    strcpy(kept, "kept on the heap");
    inner_function(kept, data);
    free(kept);
}

int main(int argc, char **argv) {
    const char *data = NULL;
    if (argc > 1) {
        int fd = open(argv[1], O_RDONLY);
        data = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
    }
    outer_function(data);
    return 0;
}
