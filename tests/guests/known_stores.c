/* Single-threaded guest with known behaviour, for fidelity tests.
 * - stores KNOWN_VALUE_{8,4,2,1} to the globals known_u{64,32,16,8} in
 *   store_known_values() (the ELF symbol table locates both), and the bytes
 *   0x00, 0x01, ... 0x0f to known_u128 with one 16-byte SSE store (x86_64);
 * - opens the path given as argv[1] (or /etc/hostname), writes "hello from guest\n"
 *   to stdout, calls getpid;
 * - prints each argument it got, one per line, so tests see argument passing;
 * - exits with status 42. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

volatile uint64_t known_u64;
volatile uint32_t known_u32;
volatile uint16_t known_u16;
volatile uint8_t known_u8;
#if defined(__x86_64__)
#include <emmintrin.h>
__m128i known_u128;
#endif

__attribute__((noinline)) void store_known_values(void)
{
    known_u64 = 0x1122334455667788ULL;
    known_u32 = 0xCAFEF00Du;
    known_u16 = 0xBEEF;
    known_u8 = 0x5A;
#if defined(__x86_64__)
    _mm_store_si128(&known_u128, _mm_set_epi64x(0x0f0e0d0c0b0a0908LL, 0x0706050403020100LL));
#endif
}

int main(int argc, char **argv)
{
    store_known_values();
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        char buf[16];
        (void)!read(fd, buf, sizeof buf);
        close(fd);
    }
    static const char msg[] = "hello from guest\n";
    (void)!write(1, msg, sizeof msg - 1);
    (void)getpid();
    for (int i = 2; i < argc; i++) {
        printf("arg:%s\n", argv[i]);
    }
    fflush(stdout);
    return 42;
}
