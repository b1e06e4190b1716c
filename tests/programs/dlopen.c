#include <dlfcn.h>
#include "checkpoint.h"
/* A library loaded after the restore: the debugger's loader must still see dlopen. */
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    printf("before\n");
    checkpoint();
    void *libm = dlopen("libm.so.6", RTLD_NOW);
    double (*root)(double) = (double (*)(double))dlsym(libm, "cbrt");
    printf("dlopen ok=%d cbrt(27)=%.1f\n", libm != 0, root(27.0));
    return 0;
}
