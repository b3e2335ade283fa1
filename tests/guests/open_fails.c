/* Opens that fail with errors whose numbers differ between architectures
 * (ENAMETOOLONG is 36 in the generic table, 78 on MIPS), and one that does not
 * (ENOENT).  tests/test_strace_render.py checks the names the trace gives. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    char path[512] = "/tmp/";
    memset(path + 5, 'n', 300); /* one component longer than NAME_MAX (255) */
    open(path, O_RDONLY);
    open("/nonexistent/cannoli-open-fails", O_RDONLY);
    return 0;
}
