#include "checkpoint.h"
/* __thread variables, reached through fs_base, keep their values. */
__thread long counter = 40;
__thread char label[16] = "tls-label";
static __thread double scale = 1.5;
int main(void) {
    for (int i = 0; i < 6; i++) {
        if (i == 3) checkpoint();
        counter += i;
        scale *= 2;
        printf("i=%d counter=%ld label=%s scale=%.1f\n", i, counter, label, scale);
    }
    return 0;
}
