/*
 * reexec.c -- a value computed inside one basic block, for the re-execution
 * tests (tests/test_reexec.py).
 *
 * The kernel writes 8 random bytes into `seed` (getrandom: a value that no
 * file holds, so only the recorded load can bring it back).  Then one
 * straight-line stretch of code -- no branch, no call, so QEMU runs it as the
 * middle of one block -- loads seed into a register (rax / x0) and runs a
 * chain of arithmetic on it:
 *
 *   m = seed * 0x9e3779b97f4a7c15 + 0x345;  m ^= m >> 7;     -> at chain_mid
 *   e = 3 * m + 7 - 0x55                                      -> at chain_end
 *
 * The labels mark the instruction before which the register holds m and e.
 * The guest prints "seed m e" in hex.
 */
#include <stdio.h>
#include <sys/random.h>

volatile unsigned long seed;
unsigned long mid_value, end_value;

int main(void)
{
    if (getrandom((void *)&seed, sizeof seed, 0) != sizeof seed) {
        return 1;
    }
#if defined(__x86_64__)
    __asm__ volatile(
        "mov seed(%%rip), %%rax\n"
        "mov $0x9e3779b97f4a7c15, %%rcx\n"
        "imul %%rcx, %%rax\n"
        "add $0x345, %%rax\n"
        "mov %%rax, %%rdx\n"
        "shr $7, %%rdx\n"
        "xor %%rdx, %%rax\n"
        ".globl chain_mid\n"
        "chain_mid:\n"
        "mov %%rax, mid_value(%%rip)\n"
        "lea 7(%%rax,%%rax,2), %%rax\n"
        "sub $0x55, %%rax\n"
        ".globl chain_end\n"
        "chain_end:\n"
        "mov %%rax, end_value(%%rip)\n"
        :
        :
        : "rax", "rcx", "rdx", "cc", "memory");
#elif defined(__aarch64__)
    __asm__ volatile(
        "adrp x9, seed\n"
        "ldr x0, [x9, :lo12:seed]\n"
        "movz x10, #0x7c15\n"
        "movk x10, #0x7f4a, lsl #16\n"
        "movk x10, #0x79b9, lsl #32\n"
        "movk x10, #0x9e37, lsl #48\n"
        "mul x0, x0, x10\n"
        "add x0, x0, #0x345\n"
        "eor x0, x0, x0, lsr #7\n"
        ".globl chain_mid\n"
        "chain_mid:\n"
        "adrp x11, mid_value\n"
        "str x0, [x11, :lo12:mid_value]\n"
        "add x0, x0, x0, lsl #1\n"
        "add x0, x0, #7\n"
        "sub x0, x0, #0x55\n"
        ".globl chain_end\n"
        "chain_end:\n"
        "adrp x11, end_value\n"
        "str x0, [x11, :lo12:end_value]\n"
        :
        :
        : "x0", "x9", "x10", "x11", "memory");
#else
#error "reexec.c: x86_64 or aarch64"
#endif
    printf("%lx %lx %lx\n", (unsigned long)seed, mid_value, end_value);
    return 0;
}
