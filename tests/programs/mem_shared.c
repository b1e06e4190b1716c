#define _GNU_SOURCE
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <dirent.h>
#include <stdlib.h>
#include <sys/shm.h>
#include <unistd.h>
#include "selfcheck.h"
/* Shared anonymous memory, a memfd mapped twice and a SysV segment attached twice: their
 * contents come back, and two mappings of one object are still one object. */
#define SIZE (3 * 4096)

static int mapped_as(void *addr, const char *what) {
    char line[512], want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
    FILE *maps = fopen("/proc/self/maps", "r");
    int found = 0;
    while (fgets(line, sizeof line, maps))
        if (strncmp(line, want, strlen(want)) == 0 && strstr(line, what))
            found = 1;
    fclose(maps);
    return found;
}

static int highest_fd(void) {
    int high = -1;
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(dir) && atoi(e->d_name) > high)
            high = atoi(e->d_name);
    closedir(dir);
    return high;
}

int main(void) {
    char *anon = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    strcpy(anon, "shared anonymous");
    strcpy(anon + 2 * 4096, "third page");
    /* The anonymous region seen again through a second mapping of its last page. */
    char *anon_tail = mremap(anon + 2 * 4096, 0, 4096, MREMAP_MAYMOVE);

    int fd = memfd_create("selfcheck-memfd", MFD_CLOEXEC);
    ftruncate(fd, SIZE);
    char *m1 = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *m2 = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 4096);
    close(fd);
    strcpy(m1 + 4096, "memfd page one");
    strcpy(m1 + 2 * 4096, "memfd page two");

    int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
    char *s1 = shmat(id, NULL, 0), *s2 = shmat(id, NULL, SHM_RDONLY);
    shmctl(id, IPC_RMID, NULL);
    strcpy(s1 + 100, "sysv segment");
    /* A memfd both mapped and held open: the restore's own descriptor of it must not stay. */
    int kept = memfd_create("kept-open", MFD_CLOEXEC);
    ftruncate(kept, 4096);
    char *k = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, kept, 0);
    strcpy(k, "kept open");

    checkpoint();

    CHECK(strcmp(anon, "shared anonymous") == 0 && strcmp(anon_tail, "third page") == 0,
          "shared anonymous contents");
    CHECK(mapped_as(anon, "/dev/zero (deleted)"), "shared anonymous shows as /dev/zero");
    anon[2 * 4096] = 'T';
    CHECK(anon_tail[0] == 'T', "shared anonymous: one object through two mappings");
    CHECK(strcmp(m2, "memfd page one") == 0 && strcmp(m1 + 2 * 4096, "memfd page two") == 0,
          "memfd contents");
    m1[4096] = 'M';
    CHECK(m2[0] == 'M', "memfd: one object through two mappings");
    CHECK(mapped_as(m1, "/memfd:selfcheck-memfd (deleted)"), "memfd keeps its name");
    CHECK(strcmp(s2 + 100, "sysv segment") == 0, "SysV contents");
    s1[100] = 'S';
    CHECK(s2[100] == 'S', "SysV: one segment through two attachments");
    CHECK(mapped_as(s1, "/SYSV"), "SysV shows as a SysV segment");
    CHECK(strcmp(k, "kept open") == 0, "memfd held open: contents");
    CHECK(pwrite(kept, "Z", 1, 0) == 1 && k[0] == 'Z',
          "memfd held open and mapped: one object through the fd and the mapping");
    CHECK(highest_fd() <= kept, "no descriptor above the program's (highest %d, kept %d)",
          highest_fd(), kept);
    return 0;
}
