/* The bundled example that setup.sh records: a little of everything -- a
 * file read, heap allocation, string work and a known store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned long checksum;

int main(int argc, char **argv)
{
    const char *who = argc > 1 ? argv[1] : "world";
    char *greeting = malloc(64);
    snprintf(greeting, 64, "hello, %s", who);
    for (size_t i = 0; greeting[i]; i++) {
        checksum = checksum * 31 + (unsigned char)greeting[i];
    }
    FILE *f = fopen("/etc/os-release", "r");
    char line[128] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) {
            line[0] = '\0';
        }
        fclose(f);
    }
    printf("%s (checksum %lx)\n%s", greeting, checksum, line);
    free(greeting);
    return 0;
}
