#include <stdio.h>
/* Writes through a null pointer: the kernel's core of it is restored at the faulting
   instruction, the pointer is fixed in the debugger, and the program finishes. */
static int target;
int main(void) {
    printf("before the crash\n"); /* still in the stdio buffer when the signal comes */
    int *volatile pointer = NULL;
    *pointer = 42;
    printf("after the crash: target=%d\n", target);
    return 0;
}
