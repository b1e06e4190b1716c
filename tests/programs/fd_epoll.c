#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "selfcheck.h"
/* An event loop: epoll over an eventfd (count 3, semaphore) and a periodic timerfd, and a
 * signalfd for SIGUSR1. After the restore the loop goes on: the eventfd's count, the timer
 * ticking, and a signal sent after the restore read from the signalfd. */
int main(void) {
    int ev = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
    int tf = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sf = signalfd(-1, &mask, SFD_NONBLOCK);
    struct itimerspec its = {.it_interval = {0, 200 * 1000 * 1000}, .it_value = {0, 50 * 1000 * 1000}};
    uint64_t three = 3;
    if (write(ev, &three, 8) != 8 || timerfd_settime(tf, 0, &its, NULL) != 0) return 2;
    struct epoll_event e = {EPOLLIN, {.u64 = 0x1111}};
    epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
    e.data.u64 = 0x2222;
    epoll_ctl(ep, EPOLL_CTL_ADD, tf, &e);
    e.data.u64 = 0x3333;
    e.events = EPOLLIN | EPOLLET;
    epoll_ctl(ep, EPOLL_CTL_ADD, sf, &e);
    checkpoint();
    kill(getpid(), SIGUSR1);
    int evs = 0, ticks = 0, sigs = 0;
    for (int round = 0; round < 50 && (evs < 3 || ticks < 2 || !sigs); round++) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, 1000);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            uint64_t v;
            if (got[i].data.u64 == 0x1111 && read(ev, &v, 8) == 8) evs += (int)v;
            if (got[i].data.u64 == 0x2222 && read(tf, &v, 8) == 8) ticks += (int)v;
            if (got[i].data.u64 == 0x3333) {
                struct signalfd_siginfo si;
                if (read(sf, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1) sigs++;
            }
        }
    }
    uint64_t v;
    CHECK(evs == 3, "eventfd counted 3 in semaphore steps (%d)", evs);
    CHECK(read(ev, &v, 8) < 0 && errno == EAGAIN, "eventfd empty and non-blocking after");
    CHECK(ticks >= 2, "timerfd ticking through epoll (%d)", ticks);
    struct itimerspec now;
    CHECK(timerfd_gettime(tf, &now) == 0 && now.it_interval.tv_nsec == 200 * 1000 * 1000,
          "timer interval kept");
    CHECK(sigs == 1, "signal sent after the restore read from the signalfd (%d)", sigs);
    return 0;
}
