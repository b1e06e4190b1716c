#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include "selfcheck.h"
/* A MAP_GROWSDOWN mapping that is not the stack grows downwards after the restore. */
static sigjmp_buf back;
static void on_segv(int sig) { (void)sig; siglongjmp(back, 1); }

static unsigned long vma_start(char *inside) {
    char line[512];
    unsigned long start, end, found = 0, at = (unsigned long)inside;
    FILE *maps = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, maps))
        if (sscanf(line, "%lx-%lx", &start, &end) == 2 && start <= at && at < end)
            found = start;
    fclose(maps);
    return found;
}

int main(void) {
    /* Room below it: the kernel keeps a gap of stack_guard_gap under a growsdown mapping. */
    char *room = mmap(NULL, 64 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(room, 64 << 20);
    char *top = room + (48 << 20);
    char *grows = mmap(top, 4 * 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE, -1, 0);
    strcpy(grows + 4096, "growsdown contents");

    checkpoint();

    struct sigaction sa = {.sa_handler = on_segv};
    sigaction(SIGSEGV, &sa, NULL);
    CHECK(strcmp(grows + 4096, "growsdown contents") == 0, "growsdown contents");
    int grew = 0;
    if (sigsetjmp(back, 1) == 0) {
        volatile char *below = grows - 3 * 4096;
        *below = 'x';
        grew = *below == 'x';
    }
    CHECK(grew, "touching below the growsdown mapping grows it");
    CHECK(vma_start(grows) <= (unsigned long)(grows - 3 * 4096),
          "the mapping now starts lower (%#lx)", vma_start(grows));
    return 0;
}
