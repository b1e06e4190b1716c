#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include "selfcheck.h"
/* Guard pages (MADV_GUARD_INSTALL) still fault after the restore; the pages around them are
 * intact. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
static sigjmp_buf back;
static void on_segv(int sig) { (void)sig; siglongjmp(back, 1); }

static int faults(volatile char *at) {
    if (sigsetjmp(back, 1) == 0) {
        (void)*at;
        return 0;
    }
    return 1;
}

static int guard_marked(char *at) {
    uint64_t entry = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    pread(fd, &entry, 8, (uintptr_t)at / 4096 * 8);
    close(fd);
    return (entry >> 58) & 1;
}

int main(void) {
    char *p = mmap(NULL, 6 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 6; i++)
        snprintf(p + i * 4096, 64, "page %d", i);
    int installed = madvise(p + 4096, 4096, MADV_GUARD_INSTALL) == 0 &&
                    madvise(p + 3 * 4096, 2 * 4096, MADV_GUARD_INSTALL) == 0;
    /* In a private file mapping and in a shared memfd too. */
    int exe = open("/proc/self/exe", O_RDONLY);
    char *f = mmap(NULL, 2 * 4096, PROT_READ, MAP_PRIVATE, exe, 0);
    close(exe);
    int mfd = memfd_create("guarded", MFD_CLOEXEC);
    ftruncate(mfd, 3 * 4096);
    char *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    close(mfd);
    strcpy(m, "memfd 0");
    strcpy(m + 2 * 4096, "memfd 2");
    installed = installed && madvise(f + 4096, 4096, MADV_GUARD_INSTALL) == 0 &&
                madvise(m + 4096, 4096, MADV_GUARD_INSTALL) == 0;
    printf("guards installed: %d\n", installed);

    checkpoint();

    struct sigaction sa = {.sa_handler = on_segv};
    sigaction(SIGSEGV, &sa, NULL);
    CHECK(faults(p + 4096) && faults(p + 3 * 4096) && faults(p + 4 * 4096),
          "guard pages fault");
    CHECK(guard_marked(p + 4096) && guard_marked(p + 4 * 4096), "pagemap marks the guards");
    CHECK(!faults(p) && strcmp(p, "page 0") == 0 && strcmp(p + 2 * 4096, "page 2") == 0 &&
          strcmp(p + 5 * 4096, "page 5") == 0, "the pages around the guards are intact");
    CHECK(installed && faults(f + 4096) && !faults(f) && memcmp(f + 1, "ELF", 3) == 0,
          "a guard page in a private file mapping");
    CHECK(faults(m + 4096) && strcmp(m, "memfd 0") == 0 && strcmp(m + 2 * 4096, "memfd 2") == 0,
          "a guard page in a shared memfd");
    return 0;
}
