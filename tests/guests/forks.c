/* fork: the child stores CHILD_MARK to `mark`, the parent PARENT_MARK after
 * waiting for it; both print their pid.  With argv[1] == "exec", the child
 * then execs argv[2] (recording cannot follow into it). */
#include <stdint.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

volatile uint64_t mark;

int main(int argc, char **argv)
{
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        return 3;
    }
    if (child == 0) {
        mark = 0xC41D;
        printf("child=%d\n", (int)getpid());
        fflush(stdout);
        if (argc > 2) {
            execv(argv[2], argv + 2);
            return 4;
        }
        return 0;
    }
    int status = 0;
    waitpid(child, &status, 0);
    mark = 0x9A9E;
    printf("parent=%d\n", (int)getpid());
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
