/* Address-space changes with known results, printed for the tests:
 * an anonymous 3-page RW mapping, an mprotect of its middle page to read-only,
 * a read-only mapping of the file argv[1], then munmap of both.
 * Prints "anon=ADDR", "file=ADDR LEN", "stack=ADDR" (of a local) in hex. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long page = sysconf(_SC_PAGESIZE);
    char *anon = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) {
        return 1;
    }
    anon[0] = 1;
    mprotect(anon + page, page, PROT_READ);
    printf("anon=%lx\n", (unsigned long)anon);
    int fd = open(argc > 1 ? argv[1] : "/etc/hostname", O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        return 2;
    }
    char *file = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (file == MAP_FAILED) {
        return 3;
    }
    printf("file=%lx %lx\n", (unsigned long)file, (unsigned long)st.st_size);
    volatile char first = file[0];
    (void)first;
    volatile int local = 1;
    printf("stack=%lx\n", (unsigned long)&local);
    munmap(file, (size_t)st.st_size);
    munmap(anon, 3 * page);
    return 0;
}
