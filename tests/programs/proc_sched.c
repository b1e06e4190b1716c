#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "selfcheck.h"
/* Each thread's scheduling policy, nice value, CPU affinity and name, checked by the
   thread itself after the restore. */
static pthread_barrier_t stop, go;

static void check_self(const char *who, int policy, int nice, int cpu, const char *name) {
    int now = sched_getscheduler(0);
    CHECK(now == policy, "%s: policy %#x (wanted %#x)", who, now, policy);
    int got = getpriority(PRIO_PROCESS, syscall(SYS_gettid));
    CHECK(got == nice, "%s: nice %d (wanted %d)", who, got, nice);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    CHECK(CPU_COUNT(&set) == 1 && CPU_ISSET(cpu, &set), "%s: affinity CPU %d only", who, cpu);
    char comm[16] = "";
    prctl(PR_GET_NAME, comm);
    CHECK(strcmp(comm, name) == 0, "%s: name %s (wanted %s)", who, comm, name);
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *worker(void *arg) {
    (void)arg;
    struct sched_param param = {0};
    sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &param);
    setpriority(PRIO_PROCESS, syscall(SYS_gettid), 3);
    pin(1);
    prctl(PR_SET_NAME, "batch-worker");
    pthread_barrier_wait(&stop);
    pthread_barrier_wait(&go);
    check_self("worker", SCHED_BATCH | SCHED_RESET_ON_FORK, 3, 1, "batch-worker");
    return 0;
}

int main(void) {
    pthread_t thread;
    pthread_barrier_init(&stop, 0, 2);
    pthread_barrier_init(&go, 0, 2);
    pthread_create(&thread, 0, worker, 0);
    setpriority(PRIO_PROCESS, syscall(SYS_gettid), 7);
    pin(0);
    prctl(PR_SET_NAME, "renamed-main");
    pthread_barrier_wait(&stop);
    checkpoint();
    pthread_barrier_wait(&go);
    check_self("main", SCHED_OTHER, 7, 0, "renamed-main");
    pthread_join(thread, 0);
    return 0;
}
