/* Known writes and reads of one 8-byte global, for the query tests.
 * In order: write_all stores 0x1111111111111111 to `cell`; write_low stores
 * 0xAA to its byte 0; write_mid stores 0xBBCC to bytes 2-3; read_cell loads
 * all 8 bytes, TIMES times (argv[1], default 3).  Then it prints the final
 * value and a few syscalls happen: a write to stdout and an openat of a file
 * that does not exist (ENOENT). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile uint64_t cell;
volatile uint64_t sink;

__attribute__((noinline)) void write_all(void) { cell = 0x1111111111111111ull; }
__attribute__((noinline)) void write_low(void) { *(volatile uint8_t *)&cell = 0xAA; }
__attribute__((noinline)) void write_mid(void) { *(volatile uint16_t *)((volatile char *)&cell + 2) = 0xBBCC; }
__attribute__((noinline)) void read_cell(void) { sink = cell; }

int main(int argc, char **argv)
{
    int times = argc > 1 ? atoi(argv[1]) : 3;
    write_all();
    write_low();
    write_mid();
    for (int i = 0; i < times; i++) {
        read_cell();
    }
    printf("cell=%llx\n", (unsigned long long)cell);
    fflush(stdout);
    int fd = open("/nonexistent/cannoli-history", O_RDONLY);
    return fd < 0 ? 0 : 1;
}
