/* What the C library's own headers say about the target it is built for,
 * printed as NAME=VALUE lines for tests/test_arch.py to compare with
 * cannoli_db/arch.py.  A syscall the target does not have prints nothing. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int main(void)
{
    printf("MAP_ANONYMOUS=%d\nMAP_FIXED=%d\n", MAP_ANONYMOUS, MAP_FIXED);
    printf("F_DUPFD=%d\nF_DUPFD_CLOEXEC=%d\n", F_DUPFD, F_DUPFD_CLOEXEC);
    printf("pointer_size=%zu\n", sizeof(void *));
    printf("SYS_openat=%d\n", SYS_openat);
#ifdef SYS_fcntl
    printf("SYS_fcntl=%d\n", SYS_fcntl);
#endif
#ifdef SYS_fcntl64
    printf("SYS_fcntl64=%d\n", SYS_fcntl64);
#endif
#ifdef SYS_mmap
    printf("SYS_mmap=%d\n", SYS_mmap);
#endif
#ifdef SYS_mmap2
    printf("SYS_mmap2=%d\n", SYS_mmap2);
#endif
    return 0;
}
