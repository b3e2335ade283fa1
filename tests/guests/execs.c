/* Runs other programs, each way a process can: argv[1] says how, argv[2] is
 * the program, the rest its arguments.
 *   fork   fork; the child execv()s it; the parent waits
 *   at     the same with execveat(): the program's directory as a descriptor,
 *          its name relative to it
 *   spawn  posix_spawn() (glibc: clone(CLONE_VM | CLONE_VFORK) and exec)
 *   fail   execv() it in this process, expecting it to fail: print the
 *          errno, then go on (a loop, a write) and exit 0
 * The runner prints "child=PID status=N" for each program it waited for. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int wait_for(pid_t child)
{
    int status = 0;
    if (waitpid(child, &status, 0) != child) {
        return 5;
    }
    printf("child=%d status=%d\n", (int)child, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: execs fork|at|spawn|fail PROGRAM [ARGS...]\n");
        return 2;
    }
    fflush(stdout);
    if (strcmp(argv[1], "fork") == 0) {
        pid_t child = fork();
        if (child == 0) {
            execv(argv[2], argv + 2);
            _exit(127);
        }
        return child < 0 ? 3 : wait_for(child);
    }
    if (strcmp(argv[1], "at") == 0) {
        pid_t child = fork();
        if (child == 0) {
            char dir[4096], name[4096];
            snprintf(dir, sizeof(dir), "%s", argv[2]);
            snprintf(name, sizeof(name), "%s", argv[2]);
            int fd = open(dirname(dir), O_PATH | O_DIRECTORY | O_CLOEXEC);
            syscall(SYS_execveat, fd, basename(name), argv + 2, environ, 0);
            _exit(127);
        }
        return child < 0 ? 3 : wait_for(child);
    }
    if (strcmp(argv[1], "spawn") == 0) {
        pid_t child;
        int err = posix_spawn(&child, argv[2], NULL, NULL, argv + 2, environ);
        return err ? 4 : wait_for(child);
    }
    if (strcmp(argv[1], "fail") == 0) {
        execv(argv[2], argv + 2);
        int err = errno;
        volatile unsigned sum = 0;
        for (unsigned i = 0; i < 1000; i++) {
            sum += i;  /* the guest goes on running after the failed call */
        }
        printf("execv errno=%d sum=%u\n", err, sum);
        return 0;
    }
    return 2;
}
