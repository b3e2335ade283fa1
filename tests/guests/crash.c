/* Dies of a signal chosen by argv[1]: segv, abort, fpe.  Stores a marker
 * first so the recording's last rows can be checked. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

volatile uint64_t before_crash;
volatile int zero;

int main(int argc, char **argv)
{
    before_crash = 0xDEADBEEFu;
    const char *how = argc > 1 ? argv[1] : "segv";
    if (strcmp(how, "abort") == 0) {
        abort();
    }
    if (strcmp(how, "fpe") == 0) {
        return 10 / zero;
    }
    return *(volatile int *)(uintptr_t)16;
}
