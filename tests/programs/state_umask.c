#include <sys/stat.h>
#include "selfcheck.h"
/* The file mode creation mask set before the checkpoint is the one after it. */
int main(void) {
    umask(0247);
    checkpoint();
    mode_t now = umask(0);
    CHECK(now == 0247, "umask %04o (wanted 0247)", (unsigned)now);
    return 0;
}
