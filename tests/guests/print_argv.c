/* Writes its whole argv to stdout, each argument followed by a NUL byte, so
 * tests see exactly what the kernel (or QEMU -0) passed: spaces, tabs and
 * empty arguments included.  Used as the interpreter of #! scripts. */
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (write(1, argv[i], strlen(argv[i]) + 1) < 0) {
            return 1;
        }
    }
    return 0;
}
