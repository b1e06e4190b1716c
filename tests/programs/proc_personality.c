#include <string.h>
#include <sys/personality.h>
#include <sys/utsname.h>
#include "selfcheck.h"
/* The personality set before the checkpoint is the one after it: UNAME26 makes uname
   report a 2.6 kernel; ADDR_NO_RANDOMIZE, which the debuggers set, is cleared here. */
int main(void) {
    unsigned wanted = (personality(0xffffffff) | UNAME26) & ~ADDR_NO_RANDOMIZE;
    personality(wanted);
    checkpoint();
    unsigned now = personality(0xffffffff);
    CHECK(now == wanted, "personality %#x (wanted %#x)", now, wanted);
    struct utsname u;
    uname(&u);
    CHECK(strncmp(u.release, "2.6.", 4) == 0, "uname release %s under UNAME26", u.release);
    return 0;
}
