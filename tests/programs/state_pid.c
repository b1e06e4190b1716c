#include <sys/types.h>
#include <unistd.h>
#include "selfcheck.h"
/* The process started for the restore gets the checkpoint's pid when the debugger may ask
 * for it (root here): a pid saved before the checkpoint is still the process's own. */
int main(void) {
    pid_t saved = getpid();
    checkpoint();
    CHECK(getpid() == saved, "pid %d (saved %d)", (int)getpid(), (int)saved);
    return 0;
}
