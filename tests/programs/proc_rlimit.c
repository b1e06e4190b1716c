#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>
#include "selfcheck.h"
/* Lowered resource limits come back, and an fd above the lowered soft RLIMIT_NOFILE (open
   before it was lowered) too: the limit must only be lowered once the fds are back. */
static struct rlimit before[RLIMIT_NLIMITS];
static const char *names[RLIMIT_NLIMITS] = {"CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS",
    "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO",
    "RTTIME"};

static void lower(int resource, rlim_t cur, rlim_t max) {
    struct rlimit r = {cur, max};
    if (setrlimit(resource, &r))
        printf("setrlimit %s failed\n", names[resource]);
}

int main(void) {
    int fd = open("/dev/null", O_RDONLY);
    dup2(fd, 150);
    close(fd);
    lower(RLIMIT_NOFILE, 100, 200);
    lower(RLIMIT_CORE, 4096, 1 << 20);
    lower(RLIMIT_FSIZE, 1 << 30, 1L << 31);
    lower(RLIMIT_STACK, 4 << 20, RLIM_INFINITY);
    lower(RLIMIT_AS, 64L << 30, RLIM_INFINITY);
    lower(RLIMIT_MSGQUEUE, 4096, 8192);
    lower(RLIMIT_SIGPENDING, 1000, 2000);
    lower(RLIMIT_RTTIME, 500000, 1000000);
    for (int i = 0; i < RLIMIT_NLIMITS; i++)
        getrlimit(i, &before[i]);
    checkpoint();
    for (int i = 0; i < RLIMIT_NLIMITS; i++) {
        struct rlimit now;
        getrlimit(i, &now);
        CHECK(now.rlim_cur == before[i].rlim_cur && now.rlim_max == before[i].rlim_max,
              "RLIMIT_%s %llu/%llu (wanted %llu/%llu)", names[i],
              (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max,
              (unsigned long long)before[i].rlim_cur, (unsigned long long)before[i].rlim_max);
    }
    CHECK(fcntl(150, F_GETFD) != -1, "fd 150, above the soft RLIMIT_NOFILE, is open");
    return 0;
}
