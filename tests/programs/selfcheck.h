/* Self-checking programs: set some state up, stop at checkpoint(), and after the restore
 * check it with CHECK, which prints "PASS what" or "FAIL what" (the tests count them). One
 * printf per line: threads checking at once do not mix their lines. */
#include <stdio.h>
#include "checkpoint.h"
static int selfcheck_failures;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        int ok_ = (cond);                                                       \
        char what_[512];                                                        \
        snprintf(what_, sizeof what_, __VA_ARGS__);                             \
        selfcheck_failures += !ok_;                                             \
        printf("%s %s\n", ok_ ? "PASS" : "FAIL", what_);                        \
        fflush(stdout);                                                         \
    } while (0)
