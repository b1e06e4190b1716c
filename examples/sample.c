/* The demo's program: sums primes in ten rounds, keeping state on the heap, in a __thread
   variable and on the stack. The demo checkpoints it at round 5 and resumes it elsewhere. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static __thread long rounds_done;

static int is_prime(long n) {
    if (n < 2) return 0;
    for (long d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

static long sum_primes(long from, long to) {
    long sum = 0;
    for (long n = from; n < to; n++)
        if (is_prime(n)) sum += n;
    return sum;
}

int main(void) {
    long *totals = calloc(10, sizeof *totals);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int round = 0; round < 10; round++) {
        totals[round] = sum_primes(round * 20000L, (round + 1) * 20000L) +
                        (round ? totals[round - 1] : 0);
        rounds_done++;
        printf("round %d: running total of primes = %ld (rounds done: %ld)\n", round,
               totals[round], rounds_done);
        fflush(stdout);
    }
    free(totals);
    printf("finished\n");
    return 0;
}
