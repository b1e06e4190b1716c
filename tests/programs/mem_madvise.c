#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* madvise state, mlock, mseal, MAP_NORESERVE and MAP_DROPPABLE, one page each, visible in /proc/self/smaps after the
 * restore. */
static struct { int advice; const char *code; } pages[] = {
    {MADV_DONTDUMP, "dd"}, {MADV_DONTFORK, "dc"}, {MADV_HUGEPAGE, "hg"},
    {MADV_NOHUGEPAGE, "nh"}, {MADV_WIPEONFORK, "wf"}, {MADV_MERGEABLE, "mg"},
    {MADV_SEQUENTIAL, "sr"}, {MADV_RANDOM, "rr"}, {-1, "lo"}, {-2, "sl"},
    {-3, "nr"}, {-4, "dp"},
};
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#define COUNT (sizeof pages / sizeof pages[0])

/* Whether the VmFlags of the mapping holding `at` show `code`. */
static int has_flag(char *at, const char *code) {
    char line[1024], want[8];
    unsigned long start, end, addr = (unsigned long)at;
    int inside = 0, found = 0;
    snprintf(want, sizeof want, " %s", code);
    FILE *smaps = fopen("/proc/self/smaps", "r");
    while (fgets(line, sizeof line, smaps)) {
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = start <= addr && addr < end;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0)
            found = strstr(line, want) != NULL;
    }
    fclose(smaps);
    return found;
}

int main(void) {
    char *p = mmap(NULL, COUNT * 2 * 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int ok[COUNT];
    for (unsigned i = 0; i < COUNT; i++) {  /* every other page: no two VMAs merge */
        char *at = p + i * 2 * 4096;
        if (pages[i].advice == -3)  /* mmap flags, not advice: the page mapped again */
            mmap(at, 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        if (pages[i].advice == -4)
            mmap(at, 4096, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS | MAP_FIXED,
                 -1, 0);
        snprintf(at, 64, "page %u", i);
        if (pages[i].advice < -2)
            ok[i] = 1;
        else if (pages[i].advice == -1)
            ok[i] = mlock(at, 4096) == 0;
        else if (pages[i].advice == -2)
            ok[i] = syscall(462, at, 4096, 0) == 0;
        else
            ok[i] = madvise(at, 4096, pages[i].advice) == 0;
        ok[i] = ok[i] && has_flag(at, pages[i].code);
        printf("%s set before: %d\n", pages[i].code, ok[i]);
    }

    checkpoint();

    for (unsigned i = 0; i < COUNT; i++) {
        char *at = p + i * 2 * 4096;
        char want[16];
        snprintf(want, sizeof want, "page %u", i);
        if (ok[i])
            CHECK(has_flag(at, pages[i].code) && strcmp(at, want) == 0, "VmFlags %s kept",
                  pages[i].code);
    }
    return 0;
}
