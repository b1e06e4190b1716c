#include <stdlib.h>
#include "selfcheck.h"
/* A filter like `xz -c < FILE > OUT`: reads numbered lines from stdin (buffered by stdio),
 * writes each doubled to stdout, checkpoint after line 300. After the restore the lines go
 * on from 300, none read twice or skipped, and OUT holds every output line once. */
int main(void) {
    char line[64];
    long expect = 0, wrong = 0;
    while (fgets(line, sizeof line, stdin)) {
        long n = strtol(line, NULL, 10);
        wrong += n != expect;
        expect++;
        printf("%ld\n", 2 * n);
        if (expect == 300) checkpoint();
    }
    CHECK(wrong == 0 && expect == 2000, "stdin read on from its offset (%ld lines, %ld wrong)",
          expect, wrong);
    return 0;
}
