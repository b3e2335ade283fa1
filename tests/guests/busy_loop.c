/* Runs a data-heavy loop for argv[1] seconds (default 30), for tests that
 * interrupt or kill a recording while the guest is busy. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

volatile uint64_t sink[4096];

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 30;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (uint64_t i = 0;; i++) {
        sink[i & 4095] += i;
        if ((i & 0xfffff) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec + (now.tv_nsec - start.tv_nsec) / 1e9 > seconds) {
                return 0;
            }
        }
    }
}
