#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "checkpoint.h"
/* A handler installed before and raised after, a blocked signal, an alternate signal stack. */
static char *alt_base;
static volatile int usr1_count, on_alt_stack;
static void on_usr1(int sig) { (void)sig; usr1_count++; }
static void on_usr2(int sig) {
    char here;
    (void)sig;
    on_alt_stack = &here >= alt_base && &here < alt_base + SIGSTKSZ * 4;
}
int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    alt_base = malloc(SIGSTKSZ * 4);
    stack_t ss = {.ss_sp = alt_base, .ss_size = SIGSTKSZ * 4, .ss_flags = 0};
    sigaltstack(&ss, 0);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, 0);
    raise(SIGUSR1);
    printf("before: usr1=%d\n", usr1_count);
    checkpoint();
    raise(SIGUSR1);
    raise(SIGUSR1);
    printf("after: usr1=%d\n", usr1_count);
    raise(SIGTERM); /* blocked: stays pending instead of killing us */
    sigset_t pending;
    sigpending(&pending);
    printf("SIGTERM pending=%d, still alive\n", sigismember(&pending, SIGTERM));
    raise(SIGUSR2);
    printf("usr2 ran on the alternate stack=%d\n", on_alt_stack);
    signal(SIGTERM, SIG_IGN);
    return 0;
}
