#include "checkpoint.h"
/* Lines still in stdio's buffer at the checkpoint come out of the restored process. */
int main(void) {
    for (int i = 0; i < 5; i++) printf("buffered line %d\n", i);
    checkpoint();
    for (int i = 5; i < 8; i++) printf("later line %d\n", i);
    return 0;
}
