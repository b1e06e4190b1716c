#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "selfcheck.h"
/* Blocked pending signals come back with their siginfo: one sent to the process with kill,
 * two queued real-time ones with values (in order), one sent to the main thread with tgkill
 * and one to another thread with pthread_kill; each is delivered once unblocked. */
struct got { int signo, code, pid, value; pid_t tid; };
static struct got log_[16];
static volatile int logged;
static volatile int go, thread_done;

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    if (logged < 16)
        log_[logged++] = (struct got){sig, info->si_code, info->si_pid,
                                      info->si_value.sival_int, (pid_t)syscall(SYS_gettid)};
}

static void *other(void *arg) {
    (void)arg;
    struct timespec nap = {0, 5000000};
    while (!go)
        nanosleep(&nap, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &set, 0);
    thread_done = 1;
    return 0;
}

int main(void) {
    int rt1 = SIGRTMIN + 1, rt2 = SIGRTMIN + 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigset_t set;
    sigemptyset(&set);
    int used[] = {SIGUSR1, SIGUSR2, rt1, rt2};
    for (int i = 0; i < 4; i++) {
        sigaction(used[i], &sa, 0);
        sigaddset(&set, used[i]);
    }
    sigprocmask(SIG_BLOCK, &set, 0);
    pthread_t thread;
    pthread_create(&thread, 0, other, 0);
    pid_t pid = getpid(), main_tid = (pid_t)syscall(SYS_gettid);
    kill(pid, SIGUSR1);
    sigqueue(pid, rt1, (union sigval){.sival_int = 1234});
    sigqueue(pid, rt1, (union sigval){.sival_int = 5678});
    syscall(SYS_tgkill, pid, main_tid, rt2);
    pthread_kill(thread, SIGUSR2);
    checkpoint();
    sigset_t pending;
    sigpending(&pending);
    CHECK(sigismember(&pending, SIGUSR1) && sigismember(&pending, rt1)
          && sigismember(&pending, rt2), "SIGUSR1, SIGRTMIN+1 and SIGRTMIN+2 pending");
    CHECK(!sigismember(&pending, SIGUSR2), "SIGUSR2 not pending for the main thread");
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, SIGUSR1);
    sigaddset(&mine, rt1);
    sigaddset(&mine, rt2);
    sigprocmask(SIG_UNBLOCK, &mine, 0);
    go = 1;
    pthread_join(thread, 0);
    CHECK(logged == 5, "%d signals delivered (wanted 5)", (int)logged);
    int seen_usr1 = 0, seen_usr2 = 0, seen_rt2 = 0, values[2] = {0, 0}, rt1_count = 0;
    for (int i = 0; i < logged; i++) {
        struct got *g = &log_[i];
        if (g->signo == SIGUSR1)
            seen_usr1 = g->code == SI_USER && g->pid == pid;
        else if (g->signo == SIGUSR2)
            seen_usr2 = g->code == SI_TKILL && g->pid == pid && g->tid != getpid();
        else if (g->signo == rt2)
            seen_rt2 = g->code == SI_TKILL && g->tid == getpid();
        else if (g->signo == rt1 && rt1_count < 2 && g->code == SI_QUEUE && g->pid == pid)
            values[rt1_count++] = g->value;
    }
    CHECK(seen_usr1, "SIGUSR1 from kill: SI_USER from pid %d", (int)pid);
    CHECK(values[0] == 1234 && values[1] == 5678, "SIGRTMIN+1 queued twice: values %d, %d in order",
          values[0], values[1]);
    CHECK(seen_rt2, "SIGRTMIN+2 from tgkill, delivered to the main thread");
    CHECK(seen_usr2, "SIGUSR2 from pthread_kill, delivered to the other thread");
    return 0;
}
