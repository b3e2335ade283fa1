/* Dies of a signal chosen by argv[1]: segv (load from address 16), abort,
 * fpe (integer division by zero), stack (unbounded recursion).  Stores a
 * marker first so the recording's last rows can be checked.
 * With "handled", it instead faults 50 times inside a SIGSEGV handler's
 * reach, jumping out of the handler each time, and exits 0. */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

volatile uint64_t before_crash;
volatile int zero;
static sigjmp_buf recover;
volatile int recovered;

__attribute__((noinline)) static int recurse(volatile char *prev)
{
    volatile char frame[512];
    frame[0] = prev ? prev[0] + 1 : 0;
    return recurse(frame) + frame[1];
}

static void on_segv(int sig)
{
    (void)sig;
    recovered++;
    siglongjmp(recover, 1);
}

static int handled(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, NULL);
    for (int i = 0; i < 50; i++) {
        if (sigsetjmp(recover, 1) == 0) {
            *(volatile int *)(uintptr_t)(16 + i) = i; /* faults mid-block */
        }
    }
    return recovered == 50 ? 0 : 1;
}

int main(int argc, char **argv)
{
    before_crash = 0xDEADBEEFu;
    const char *how = argc > 1 ? argv[1] : "segv";
    if (strcmp(how, "handled") == 0) {
        return handled();
    }
    if (strcmp(how, "abort") == 0) {
        abort();
    }
    if (strcmp(how, "fpe") == 0) {
        return 10 / zero;
    }
    if (strcmp(how, "stack") == 0) {
        return recurse(NULL);
    }
    return *(volatile int *)(uintptr_t)16;
}
