/* Mappings whose file the indexer can only know from the target's own
 * constants, printed for the tests (tests/test_architectures.py).  argv[1] is
 * a file of at least one page, every byte 'm'.  Each line is "NAME=ADDR BYTE":
 * where the mapping is and the first byte the guest read from it.
 *   anon_fd  MAP_ANONYMOUS with the file's descriptor: Linux ignores the
 *            descriptor, so the page is anonymous (it reads 0)
 *   file     the file, through its descriptor
 *   dupfd    the file, through fcntl(fd, F_DUPFD, 10)'s duplicate
 *   cloexec  the file, through fcntl(fd, F_DUPFD_CLOEXEC, 20)'s duplicate
 *   flag20   (MIPS only) the file with flag bit 0x20 set: MAP_ANONYMOUS on the
 *            other targets, the kernel's unused MAP_RENAME (asm/mman.h) on MIPS
 * glibc's fcntl issues the fcntl64 syscall on the 32-bit targets. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

static int show(const char *name, int flags, int fd)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *p = mmap(NULL, (size_t)page, PROT_READ, flags, fd, 0);
    if (p == MAP_FAILED) {
        return 1;
    }
    printf("%s=%lx %d\n", name, (unsigned long)p, p[0]);
    return 0;
}

int main(int argc, char **argv)
{
    int fd = argc > 1 ? open(argv[1], O_RDONLY) : -1;
    if (fd < 0) {
        return 2;
    }
    int dupfd = fcntl(fd, F_DUPFD, 10);
    int cloexec = fcntl(fd, F_DUPFD_CLOEXEC, 20);
    if (dupfd < 10 || cloexec < 20) {
        return 3;
    }
    int failed = show("anon_fd", MAP_PRIVATE | MAP_ANONYMOUS, fd) + show("file", MAP_PRIVATE, fd) +
                 show("dupfd", MAP_PRIVATE, dupfd) + show("cloexec", MAP_PRIVATE, cloexec);
#ifdef __mips__
    failed += show("flag20", MAP_PRIVATE | 0x20, fd);
#endif
    return failed ? 4 : 0;
}
