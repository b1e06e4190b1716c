#include <sys/resource.h>
#include "selfcheck.h"
/* Restored where the hard RLIMIT_NOFILE is below the image's and cannot be raised: the
   soft limit is as close to the image's as the hard one allows. */
int main(void) {
    struct rlimit before, now;
    getrlimit(RLIMIT_NOFILE, &before);
    checkpoint();
    getrlimit(RLIMIT_NOFILE, &now);
    printf("RLIMIT_NOFILE before %llu/%llu, now %llu/%llu\n",
           (unsigned long long)before.rlim_cur, (unsigned long long)before.rlim_max,
           (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max);
    CHECK(now.rlim_max < before.rlim_max, "the hard limit stayed below the image's");
    CHECK(now.rlim_cur == (before.rlim_cur < now.rlim_max ? before.rlim_cur : now.rlim_max),
          "the soft limit is as close to the image's as allowed");
    return 0;
}
