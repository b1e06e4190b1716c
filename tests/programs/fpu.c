#include <fenv.h>
#include "checkpoint.h"
/* x87, SSE and AVX values held in registers across the checkpoint, and the rounding mode. */
struct values {
    double avx_in[4], avx_out[4];
    double sse_in, sse_out;
    long double x87_in, x87_out;
};
int main(void) {
    struct values v = {{1.25, -2.5, 3.0e10, 1.0 / 3.0}, {0}, 2.718281828459045, 0,
                       1.0L / 7.0L, 0};
    fesetround(FE_UPWARD);
    printf("before: rounding upward=%d\n", fegetround() == FE_UPWARD);
    __asm__ volatile(
        "vmovupd %c[avx_in](%[v]), %%ymm9\n\t"
        "movsd %c[sse_in](%[v]), %%xmm14\n\t"
        "fldt %c[x87_in](%[v])\n\t"
        "call checkpoint\n\t"
        "vmovupd %%ymm9, %c[avx_out](%[v])\n\t"
        "movsd %%xmm14, %c[sse_out](%[v])\n\t"
        "fstpt %c[x87_out](%[v])\n\t"
        "vzeroupper\n\t"
        :
        : [v] "r"(&v), [avx_in] "i"(__builtin_offsetof(struct values, avx_in)),
          [avx_out] "i"(__builtin_offsetof(struct values, avx_out)),
          [sse_in] "i"(__builtin_offsetof(struct values, sse_in)),
          [sse_out] "i"(__builtin_offsetof(struct values, sse_out)),
          [x87_in] "i"(__builtin_offsetof(struct values, x87_in)),
          [x87_out] "i"(__builtin_offsetof(struct values, x87_out))
        : "memory", "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm9",
          "xmm14", "st");
    printf("avx: %a %a %a %a\n", v.avx_out[0], v.avx_out[1], v.avx_out[2], v.avx_out[3]);
    printf("sse: %a\n", v.sse_out);
    printf("x87: %La\n", v.x87_out);
    printf("after: rounding upward=%d\n", fegetround() == FE_UPWARD);
    return 0;
}
