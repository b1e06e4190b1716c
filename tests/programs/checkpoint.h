/* The tests stop at checkpoint() to take the image; it must stay a real call. */
#include <stdio.h>
static void __attribute__((noinline, used)) checkpoint(void) { __asm__ volatile("" ::: "memory"); }
