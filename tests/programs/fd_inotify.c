#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>
#include "selfcheck.h"
/* inotify watching a directory (watch 2: watch 1 was removed before the checkpoint). After
 * the restore, a file created there is seen, under watch number 2. */
int main(void) {
    char dir[] = "/tmp/selfcheck-inotify-XXXXXX";
    if (!mkdtemp(dir)) return 2;
    int in = inotify_init1(IN_CLOEXEC);
    int first = inotify_add_watch(in, "/", IN_ATTRIB);
    inotify_rm_watch(in, first);
    char ignored[256];
    read(in, ignored, sizeof ignored);
    int wd = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE);
    checkpoint();
    char path[64];
    snprintf(path, sizeof path, "%s/created-after", dir);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    struct pollfd p = {in, POLLIN, 0};
    char buf[4096] __attribute__((aligned(8)));
    ssize_t n = poll(&p, 1, 2000) == 1 ? read(in, buf, sizeof buf) : -1;
    struct inotify_event *e = (struct inotify_event *)buf;
    CHECK(n > 0 && (e->mask & IN_CREATE) && strcmp(e->name, "created-after") == 0,
          "the file created after the restore seen (%zd)", n);
    CHECK(n > 0 && e->wd == wd && wd == 2, "under the same watch number (%d, %d)",
          n > 0 ? e->wd : -1, wd);
    CHECK(fcntl(in, F_GETFD) == FD_CLOEXEC && !(fcntl(in, F_GETFL) & O_NONBLOCK),
          "flags kept");
    unlink(path);
    rmdir(dir);
    return 0;
}
