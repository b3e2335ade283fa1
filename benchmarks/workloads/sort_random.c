/* sort_random: qsort of pseudo-random uint32 values (LCG), several rounds.
 * Adversarial for trace compression: the data values are incompressible.
 * Usage: sort_random [scale]   (default 1; work grows linearly with scale)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define N 200000u
#define ROUNDS 20u

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    unsigned scale = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1u;
    if (scale == 0)
        scale = 1;
    uint32_t *a = malloc(N * sizeof *a);
    if (!a)
        return 1;
    uint32_t state = 12345u;
    uint64_t checksum = 0;
    for (unsigned r = 0; r < ROUNDS * scale; r++) {
        for (unsigned i = 0; i < N; i++) {
            state = state * 1664525u + 1013904223u;
            a[i] = state ^ (state >> 16);
        }
        qsort(a, N, sizeof *a, cmp_u32);
        for (unsigned i = 1; i < N; i++)
            if (a[i - 1] > a[i])
                return 2;
        checksum = checksum * 31u + a[0] + a[N / 2] + a[N - 1];
    }
    printf("sort_random checksum %llu\n", (unsigned long long)checksum);
    free(a);
    return 0;
}
