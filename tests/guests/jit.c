/* Self-modifying code: writes `mov eax, 1; ret` into an RWX page, calls it,
 * rewrites the immediate to 2, calls it again.  Prints "code=ADDR" and exits
 * with 0 if the calls returned 1 then 2. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void)
{
    uint8_t *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        return 3;
    }
    static const uint8_t mov_eax_1_ret[] = { 0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3 };
    memcpy(code, mov_eax_1_ret, sizeof mov_eax_1_ret);
    int (*fn)(void) = (int (*)(void))code;
    int first = fn();
    ((volatile uint8_t *)code)[1] = 0x02;
    int second = fn();
    printf("code=%lx\n", (unsigned long)code);
    return first == 1 && second == 2 ? 0 : 1;
}
