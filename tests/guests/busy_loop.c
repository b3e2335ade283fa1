/* Runs a data-heavy loop for argv[1] seconds (default 30), for tests that
 * interrupt or kill a recording while the guest is busy.  With argv[2]
 * "noise" it stores pseudo-random values at pseudo-random places, which no
 * compressor shrinks: for tests that need the trace to grow fast on disk. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile uint64_t sink[4096];

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 30;
    int noise = argc > 2 && strcmp(argv[2], "noise") == 0;
    uint64_t x = 88172645463325252ull;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (uint64_t i = 0;; i++) {
        if (noise) {
            x ^= x << 13; /* xorshift64 */
            x ^= x >> 7;
            x ^= x << 17;
            sink[x & 4095] = x;
        } else {
            sink[i & 4095] += i;
        }
        if ((i & 0xfffff) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec + (now.tv_nsec - start.tv_nsec) / 1e9 > seconds) {
                return 0;
            }
        }
    }
}
