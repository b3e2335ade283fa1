/* Single-threaded guest whose memory accesses take the paths QEMU 10 treats
 * apart (x86_64), for comparing inline records with callbacks:
 * - fxsave/fxrstor and xsave: accesses made by helpers, in C;
 * - lock cmpxchg16b: a 16-byte atomic (a helper once threads exist);
 * - rep movsb of COPY bytes: QEMU 10 loops inside one block, up to 65536
 *   iterations, so one pass through the block appends ~2 records per byte;
 * - movdqu: 16-byte loads and stores in generated code.
 * No stdio and no malloc (glibc's malloc draws a random tcache key), and main
 * starts by clearing the registers glibc's startup left (values computed with
 * the thread id), so that from main on two runs with QEMU's -seed and no
 * address randomisation do the same thing.
 * Writes "done\n" and exits 0. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define COPY 200000
static char src[COPY + 64], dst[COPY + 64];
static char area[4096] __attribute__((aligned(64)));
static unsigned __int128 pair __attribute__((aligned(16)));

int main(void)
{
    __asm__ volatile("xor %%eax, %%eax\n\tmov %%rax, %%rbx\n\tmov %%rax, %%rcx\n\tmov %%rax, %%rdx\n\t"
                     "mov %%rax, %%r8\n\tmov %%rax, %%r9\n\tmov %%rax, %%r10\n\tmov %%rax, %%r11\n\t"
                     "mov %%rax, %%r12\n\tmov %%rax, %%r13\n\tmov %%rax, %%r14\n\tmov %%rax, %%r15\n\t"
                     "mov %%rax, %%rbp"
                     ::: "rax", "rbx", "rcx", "rdx", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
                         "r15", "cc");
    for (int i = 0; i < COPY; i++) {
        src[i] = (char)(i * 7);
    }
    for (int k = 0; k < 20; k++) {
        __asm__ volatile("fxsave %0" : "=m"(*(char(*)[512])area));
        __asm__ volatile("fxrstor %0" ::"m"(*(char(*)[512])area));
        __asm__ volatile("xsave %0" : "=m"(*(char(*)[1024])(area + 1024)) : "a"(7), "d"(0) : "memory");
        uint64_t lo = (uint64_t)pair, hi = (uint64_t)(pair >> 64);
        __asm__ volatile("lock cmpxchg16b %0" : "+m"(pair), "+a"(lo), "+d"(hi) : "b"(lo + k), "c"(hi) : "memory");
        void *d = dst + 3, *s = src + 1;
        unsigned long n = COPY - k;
        __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
        __asm__ volatile("movdqu %1, %%xmm0\n\tmovdqu %%xmm0, %0" : "=m"(*(char(*)[16])(area + 3000))
                         : "m"(*(char(*)[16])(dst + 40 + k)) : "xmm0");
    }
    (void)!write(1, "done\n", 5);
    return dst[1000] == src[998] ? 0 : 1;
}
