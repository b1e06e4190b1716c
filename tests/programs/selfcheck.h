/* Self-checking programs: set some state up, stop at checkpoint(), and after the restore
 * check it with CHECK, which prints "PASS what" or "FAIL what" (the tests count them). */
#include <stdio.h>
#include "checkpoint.h"
static int selfcheck_failures;
#define CHECK(cond, ...)                                            \
    do {                                                            \
        int ok_ = (cond);                                           \
        selfcheck_failures += !ok_;                                 \
        printf(ok_ ? "PASS " : "FAIL ");                            \
        printf(__VA_ARGS__);                                        \
        printf("\n");                                               \
        fflush(stdout);                                             \
    } while (0)
