/* Accesses that cross a 64-byte line, for the store's address index
 * (mem_lines): an 8-byte store at line offset 60 puts bytes 4..7 of its value
 * in the next line, a 4-byte store at 62 its last two bytes.  The ELF symbol
 * table locates `lines`; the values are below. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

_Alignas(64) volatile unsigned char lines[256];

__attribute__((noinline)) void cross(uint64_t v8, uint32_t v4)
{
    memcpy((void *)(lines + 60), &v8, 8);   /* bytes 60..67 */
    memcpy((void *)(lines + 126), &v4, 4);  /* bytes 126..129 */
}

int main(void)
{
    cross(0x8877665544332211ULL, 0xDDCCBBAAu);
    uint64_t back;
    memcpy(&back, (const void *)(lines + 60), 8);
    printf("%016llx %02x\n", (unsigned long long)back, lines[128]);
    return 0;
}
