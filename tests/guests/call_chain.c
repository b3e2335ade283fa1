/* Known call chains, for the call-stack tests (tests/test_calls.py).
 * - main -> chain_a -> chain_b -> memcpy into `dest` (who-wrote --stack on dest
 *   names chain_b, chain_a, main);
 * - recurse(n) calls itself down to depth RECURSION (argv[1], default 7) and
 *   counts its calls; at the bottom it stores to `deepest`;
 * - leaf() is called LEAVES (argv[2], default 5) times from main;
 * - a longjmp out of a deep chain: jump_a -> jump_b -> jump_c -> longjmp back to
 *   main's setjmp; after it, main calls after_jump(), which stores to `landed`;
 * - a signal handler in the chain: main -> raise_signal -> raise(SIGUSR1) ->
 *   on_signal -> in_handler, which stores to `in_signal`; after the handler
 *   returns, raise_signal calls after_signal(), which stores to `resumed`.
 * It prints "recurse_calls N" and "leaf_calls N": the calls it made. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char src[256];
char dest[256];
volatile int deepest, landed, in_signal, resumed, leaf_sink;
volatile size_t copy_size = sizeof dest;
static jmp_buf jump_back;
static int recurse_calls, leaf_calls;

__attribute__((noinline)) void chain_b(void)
{
    memcpy(dest, src, copy_size);
    __asm__ volatile("" ::: "memory");  /* no tail call: chain_b stays on the stack */
}

__attribute__((noinline)) void chain_a(void)
{
    chain_b();
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) int recurse(int n)
{
    recurse_calls++;
    if (n <= 1) {
        deepest = n;
        return 1;
    }
    return recurse(n - 1) + 1;
}

__attribute__((noinline)) void leaf(int i) { leaf_sink += i; leaf_calls++; }

__attribute__((noinline)) void jump_c(void) { longjmp(jump_back, 1); }
__attribute__((noinline)) void jump_b(void) { jump_c(); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void jump_a(void) { jump_b(); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void after_jump(void) { landed = 1; }

__attribute__((noinline)) void in_handler(void) { in_signal = 1; }
__attribute__((noinline)) void on_signal(int sig) { (void)sig; in_handler(); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void after_signal(void) { resumed = 1; }

__attribute__((noinline)) void raise_signal(void)
{
    raise(SIGUSR1);
    after_signal();
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
    int depth = argc > 1 ? atoi(argv[1]) : 7;
    int leaves = argc > 2 ? atoi(argv[2]) : 5;
    for (int i = 0; i < (int)sizeof src; i++) {
        src[i] = (char)i;
    }
    chain_a();
    recurse(depth);
    for (int i = 0; i < leaves; i++) {
        leaf(i);
    }
    if (setjmp(jump_back) == 0) {
        jump_a();
    }
    after_jump();
    signal(SIGUSR1, on_signal);
    raise_signal();
    printf("recurse_calls %d\nleaf_calls %d\n", recurse_calls, leaf_calls);
    return 0;
}
