/* Heap writes with a known count: fill_heap stores COUNT (argv[1], default
 * 1000) uint32 values into a malloc'ed 64 KiB block (below glibc's mmap
 * threshold, so it comes from the brk heap).  Prints "heap=ADDR". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) void fill_heap(volatile uint32_t *p, int count)
{
    for (int i = 0; i < count; i++) {
        p[i] = 0xC0DE0000u + (uint32_t)i;
    }
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 1000;
    if (count < 0 || count > 16384) {
        return 2;
    }
    uint32_t *p = malloc(65536);
    if (!p) {
        return 1;
    }
    fill_heap(p, count);
    printf("heap=%lx\n", (unsigned long)p);
    return 0;
}
