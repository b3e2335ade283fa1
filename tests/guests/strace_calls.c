/* The common syscalls, each with arguments strace decodes: files with flags,
 * data with non-printable bytes and longer than strace -s 32 shows, memory
 * mappings, stat, failing calls, a terminal ioctl on a file, futex, signal
 * actions and masks, fork and wait, and exit_group.  No stdio: every call is
 * one this file makes (tests/test_strace_render.py compares them with strace).
 *
 * Usage: strace_calls DIR   (creates DIR/strace-calls.txt)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void on_usr1(int sig)
{
    (void)sig;
}

int main(int argc, char **argv)
{
    char path[4096] = { 0 };
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    size_t n = strlen(dir);
    if (n > sizeof(path) - 32) {
        return 2;
    }
    memcpy(path, dir, n);
    memcpy(path + n, "/strace-calls.txt", sizeof("/strace-calls.txt"));

    int fd = openat(AT_FDCWD, path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    static const char odd[] = "tab\there\nnul\0esc\33[1m del\177 hi\377 q\"b\\ 7\0017";
    write(fd, odd, sizeof(odd) - 1);
    write(fd, "0123456789abcdefghijklmnopqrstuvwxyz-longer-than-32\n", 52);
    pwrite64(fd, "at-offset", 9, 100);
    lseek(fd, 0, SEEK_SET);
    char buf[256];
    read(fd, buf, sizeof(buf));
    pread64(fd, buf, 9, 100);
    struct stat st;
    fstat(fd, &st);
    struct termios tio;
    ioctl(fd, TCGETS, &tio);
    int copy = dup(fd);
    dup2(fd, 10);
    dup3(fd, 11, O_CLOEXEC);
    fcntl(fd, F_GETFD);
    fcntl(copy, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_GETFL);
    close(copy);
    close(10);
    close(11);
    close(fd);

    fd = syscall(SYS_open, path, O_RDONLY);
    close(fd);
    static char big[5000]; /* more than the plugin copies of one buffer (4096) */
    memset(big, 'A', sizeof(big));
    int null_fd = open("/dev/null", O_WRONLY);
    write(null_fd, big, sizeof(big));
    close(null_fd);
    openat(AT_FDCWD, "/nonexistent/cannoli-strace", O_RDONLY);
    access("/nonexistent/cannoli-strace", F_OK);
    access(path, R_OK | W_OK);
    stat("/nonexistent/cannoli-strace", &st);
    close(999);
    read(999, buf, 10);
    write(-1, "x", 1);

    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(p, 4096, PROT_READ);
    munmap(p, 8192);
    syscall(SYS_brk, 0);

    static int word = 1;
    syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);

    struct sigaction sa = { 0 }, old;
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGUSR1, &sa, &old);
    sigset_t set, was;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, &was);
    sigprocmask(SIG_SETMASK, &was, NULL);

    getpid();
    gettid();
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    unsigned char random_bytes[8];
    getrandom(random_bytes, sizeof(random_bytes), GRND_NONBLOCK);

    struct iovec iov[2] = { { "vec-one ", 8 }, { "vec-two\n", 8 } };
    writev(1, iov, 2);

    pid_t child = fork();
    if (child == 0) {
        write(1, "child\n", 6);
        _exit(3);
    }
    int status;
    wait4(child, &status, 0, NULL);
    unlink(path);
    return 0;
}
