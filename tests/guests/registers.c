/*
 * registers.c -- loads known constants into registers, then makes a syscall,
 * for the register-recording tests.
 *
 * x86_64: rbx, rbp, r8-r10, r12-r15 hold CONSTANT(k) when `write` is entered;
 * the kernel (QEMU) preserves them, and puts the return value in rax, the
 * address of `after_syscall` in rcx; the carry flag, set right before the
 * syscall, survives it, and the guest's own pushfq at `after_syscall` stores
 * its flags to `flags_seen`.  aarch64: x19-x28 hold CONSTANT(k) and
 * the return value comes back in x0.  Registers are recorded at block entry,
 * so the tests read them at `after_syscall`, the first instruction of the
 * block after the syscall.
 */
#include <stdio.h>

static const char message[] = "registers loaded\n";
volatile unsigned long flags_seen;

int main(void)
{
#if defined(__x86_64__)
    __asm__ volatile(
        "push %%rbp\n"
        "mov $0x1111111111111101, %%rbx\n"
        "mov $0x1111111111111102, %%rbp\n"
        "mov $0x1111111111111108, %%r8\n"
        "mov $0x1111111111111109, %%r9\n"
        "mov $0x111111111111110a, %%r10\n"
        "mov $0x111111111111110c, %%r12\n"
        "mov $0x111111111111110d, %%r13\n"
        "mov $0x111111111111110e, %%r14\n"
        "mov $0x111111111111110f, %%r15\n"
        "mov $1, %%eax\n"              /* write(1, message, sizeof message - 1) */
        "mov $1, %%edi\n"
        "stc\n"
        "syscall\n"
        ".globl after_syscall\n"
        "after_syscall:\n"
        "pushfq\n"
        "popq %[seen]\n"
        "pop %%rbp\n"
        : [seen] "=m"(flags_seen)
        : "S"(message), "d"(sizeof message - 1)
        : "rax", "rbx", "rcx", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
          "r15", "memory");
#elif defined(__aarch64__)
    register const char *buffer __asm__("x1") = message;
    register unsigned long length __asm__("x2") = sizeof message - 1;
    __asm__ volatile(
        "movz x19, #0x1913\n"
        "movz x20, #0x2014\n"
        "movz x21, #0x2115\n"
        "movz x22, #0x2216\n"
        "movz x23, #0x2317\n"
        "movz x24, #0x2418\n"
        "movz x25, #0x2519\n"
        "movz x26, #0x2620\n"
        "movz x27, #0x2721\n"
        "movz x28, #0x2822\n"
        "mov x8, #64\n"                /* write(1, message, sizeof message - 1) */
        "mov x0, #1\n"
        "svc #0\n"
        ".globl after_syscall\n"
        "after_syscall:\n"
        "nop\n"
        :
        : "r"(buffer), "r"(length)
        : "x0", "x8", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27",
          "x28", "memory");
#else
#error "registers.c: x86_64 or aarch64"
#endif
    return 0;
}
