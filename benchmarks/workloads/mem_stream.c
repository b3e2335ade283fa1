/* mem_stream: a read-modify-write stream over a 64 MiB table at pseudo-random
 * slots: two memory accesses per iteration, ITER iterations (argv[1], default
 * 50 million, so 100 million accesses), nothing else of note.  For the query
 * benchmark: many distinct addresses, each written a handful of times. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS (8u << 20) /* 8 Mi uint64 = 64 MiB */

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], NULL, 10) : 50000000ul;
    uint64_t *table = calloc(SLOTS, sizeof *table);
    if (!table)
        return 1;
    uint32_t state = 12345u;
    for (unsigned long i = 0; i < iterations; i++) {
        state = state * 1664525u + 1013904223u;
        table[state & (SLOTS - 1)] += i;
    }
    printf("mem_stream %llu\n", (unsigned long long)table[state & (SLOTS - 1)]);
    return 0;
}
