#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include "selfcheck.h"
/* A seccomp filter (one that allows everything) cannot come back: the restore refuses, and
   with --accept-loss the process goes on without it. */
int main(void) {
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {1, &allow};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    int set = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
    printf("filter installed: %d\n", set == 0);
    checkpoint();
    CHECK(prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 0, "no seccomp filter after the restore");
    return 0;
}
