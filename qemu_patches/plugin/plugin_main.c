/*
 * plugin_main.c -- Cannoli DB's QEMU TCG plugin: entry point and options.
 *
 * Usage (the recorder builds this command line; see cannoli_db/recorder):
 *   qemu-x86_64 -plugin libcannoli.so,ring=PATH[,mem=on|off] ./app [args...]
 *     ring=PATH  the shared-memory ring (a memfd the recorder created and
 *              initialised; see cannoli_ring.h) as a path to open, the
 *              recorder's /proc/<pid>/fd/<n>: a QEMU that follows an exec
 *              (qemu_patches/0003) loads the plugin again with the same
 *              options, and the new image opens the same ring.
 *     fd=N     the ring as a descriptor QEMU inherited.  With ring=PATH too,
 *              the plugin maps the ring from PATH and closes descriptor N only
 *              if it is that ring's memfd: in the first QEMU it is, and holding
 *              the lowest free descriptor until then keeps QEMU's own files
 *              above the guest's first ones; in an exec'd program's QEMU, N is
 *              the guest's and stays open.  One of ring and fd is required.
 *     mem=on   record every memory access with its value (default);
 *     mem=off  blocks, syscalls and threads only.
 *     regs=on  record registers at block entry (default with plugin API >= 2;
 *              an error with API 1, which has no register access);
 *     regs=off do not.
 *     regs=check  record them, reading every register at every block, and
 *              count the changes the written-register masks would have
 *              missed (the ring's regs_missed): a test of plugin_reg_writes.c.
 *     inline=on  (default) where QEMU has qemu_patches/0004, its generated
 *              code writes the records of blocks, accesses and registers
 *              (plugin_inline.c); inline=off records through callbacks
 *              there too.  regs=check always uses callbacks.
 *     x86_flags=on  record x86 eflags too: only for a QEMU whose eflags
 *              read computes the lazy flags (qemu_patches/0002; default off).
 *     layout_log=PATH  QEMU runs with "-d page -D PATH": it logs the guest's
 *              address space once the program is loaded, and then again after
 *              every guest mmap.  The plugin points that log at /dev/null when
 *              the first block is translated, so only the first layout is kept.
 * An unknown or malformed option is an error: QEMU refuses to start.
 *
 * Records: block translations, block executions (exact instruction counts),
 * memory accesses with values, syscalls with arguments, return values and path
 * strings, thread start and exit, and cross-thread ordering segments.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = CN_QEMU_PLUGIN_API;

struct cn_config cn_cfg;

static const char *layout_log; /* QEMU's -D file, until the first block */

void cn_layout_logged(void)
{
    if (!layout_log) {
        return;
    }
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *entry;
    char link[PATH_MAX + 1];
    while (dir && (entry = readdir(dir)) != NULL) {
        char path[sizeof("/proc/self/fd/") + sizeof(entry->d_name)];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", entry->d_name);
        ssize_t n = readlink(path, link, PATH_MAX);
        if (n <= 0 || (size_t)n != strlen(layout_log) || memcmp(link, layout_log, (size_t)n) != 0) {
            continue;
        }
        int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null_fd >= 0) {
            dup2(null_fd, atoi(entry->d_name));
            close(null_fd);
        }
    }
    if (dir) {
        closedir(dir);
    }
    layout_log = NULL;
}

static int fail(const char *msg, const char *detail)
{
    fprintf(stderr, "cannoli plugin: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    return -1;
}

static int parse_on_off(const char *value, bool *out)
{
    if (strcmp(value, "on") == 0 || strcmp(value, "true") == 0) {
        *out = true;
        return 0;
    }
    if (strcmp(value, "off") == 0 || strcmp(value, "false") == 0) {
        *out = false;
        return 0;
    }
    return -1;
}

static const char *ring_path; /* ring=PATH */

static int parse_options(int argc, char **argv, int *fd, bool *want_inline)
{
    *fd = -1;
    *want_inline = true;
    cn_cfg.record_mem = true;
    cn_cfg.record_regs = CN_QEMU_PLUGIN_API >= 2;
    for (int i = 0; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            return fail("option without a value (expected key=value)", argv[i]);
        }
        const char *value = eq + 1;
        size_t keylen = (size_t)(eq - argv[i]);
        if (keylen == 2 && strncmp(argv[i], "fd", 2) == 0) {
            char *end;
            long v = strtol(value, &end, 10);
            if (*value == '\0' || *end != '\0' || v < 0 || v > 1 << 20) {
                return fail("fd must be a descriptor number", argv[i]);
            }
            *fd = (int)v;
        } else if (keylen == 4 && strncmp(argv[i], "ring", 4) == 0) {
            if (value[0] != '/' || strlen(value) >= PATH_MAX) {
                return fail("ring must be an absolute path", argv[i]);
            }
            ring_path = value;
        } else if (keylen == 3 && strncmp(argv[i], "mem", 3) == 0) {
            if (parse_on_off(value, &cn_cfg.record_mem) != 0) {
                return fail("mem must be on or off", argv[i]);
            }
        } else if (keylen == 4 && strncmp(argv[i], "regs", 4) == 0) {
            cn_cfg.regs_check = strcmp(value, "check") == 0;
            if (!cn_cfg.regs_check && parse_on_off(value, &cn_cfg.record_regs) != 0) {
                return fail("regs must be on, off or check", argv[i]);
            }
            cn_cfg.record_regs |= cn_cfg.regs_check;
            if (cn_cfg.record_regs && CN_QEMU_PLUGIN_API < 2) {
                return fail("regs=on needs QEMU >= 9.0 (plugin API >= 2); this plugin is for API 1",
                            argv[i]);
            }
        } else if (keylen == 6 && strncmp(argv[i], "inline", 6) == 0) {
            if (parse_on_off(value, want_inline) != 0) {
                return fail("inline must be on or off", argv[i]);
            }
        } else if (keylen == 9 && strncmp(argv[i], "x86_flags", 9) == 0) {
            if (parse_on_off(value, &cn_cfg.x86_flags) != 0) {
                return fail("x86_flags must be on or off", argv[i]);
            }
        } else if (keylen == 10 && strncmp(argv[i], "layout_log", 10) == 0) {
            if (value[0] != '/' || strlen(value) >= PATH_MAX) {
                return fail("layout_log must be an absolute path", argv[i]);
            }
            layout_log = value;
        } else {
            return fail("unknown option (known: ring, fd, mem, regs, inline, x86_flags, layout_log)", argv[i]);
        }
    }
    if (*fd < 0 && !ring_path) {
        return fail("give the recorder's ring with ring=PATH or fd=N", NULL);
    }
    return 0;
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;
    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The ring at ring=PATH: the recorder keeps the memfd open, so its
 * /proc/<pid>/fd/<n> opens the same memory from every QEMU of the recording.
 * An inherited fd=N is closed where it is that memfd (it is nothing else's). */
static int open_ring(int *fd)
{
    if (!ring_path) {
        return 0;
    }
    int inherited = *fd;
    *fd = open(ring_path, O_RDWR | O_CLOEXEC);
    if (*fd < 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof(why), "%s: %s (is the recorder still running, as this user?)", ring_path,
                 strerror(errno));
        return fail("cannot open the ring", why);
    }
    if (inherited >= 0 && inherited != *fd && same_file(inherited, *fd)) {
        close(inherited);
    }
    return 0;
}

static int map_ring(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size < sizeof(struct cn_ring_header)) {
        close(fd);
        return fail("the ring descriptor is not a ring", ring_path);
    }
    void *mem = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        close(fd);
        return fail("cannot map the ring", strerror(errno));
    }
    close(fd); /* the mapping stays; the guest never sees the descriptor */
    struct cn_ring_header *r = mem;
    if (memcmp(r->magic, CN_RING_MAGIC, 8) != 0 || r->version != CN_RING_VERSION ||
        r->format_version != CN_FORMAT_VERSION) {
        return fail("ring has a different magic or version than this plugin", NULL);
    }
    cn_lane_layout(&cn_cfg.layout);
    if (r->lane_stride != cn_cfg.layout.stride || r->n_lanes == 0 ||
        cn_ring_size(r->n_lanes) > (size_t)st.st_size) {
        return fail("ring layout does not match this plugin", NULL);
    }
    cn_cfg.ring = r;
    return 0;
}

/* In the vCPU's thread, before it runs guest code. */
static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    cn_regs_select(id, vcpu_index);
    cn_inline_vcpu_init(vcpu_index);
}

static void vcpu_exit(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    struct cn_thread *t = &cn_self;
    (void)id, (void)vcpu_index;
    cn_inline_lock(t);
    if (t->lane) {
        cn_thread_exit(t);
    }
    cn_inline_forget(t);
    cn_inline_unlock(t);
}

/* Runs on exit_group in the exiting thread; other threads' lanes stay OWNED
 * and the recorder salvages them once QEMU is gone. */
static void plugin_atexit(qemu_plugin_id_t id, void *udata)
{
    struct cn_thread *t = &cn_self;
    (void)id, (void)udata;
    cn_inline_lock(t);
    if (t->lane) {
        cn_resolve_at_exit(t);
        cn_thread_exit(t);
    }
    cn_inline_forget(t);
    cn_inline_unlock(t);
    cn_inline_flush_others(t);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    int fd;
    bool want_inline;
    if (info->system_emulation) {
        return fail("only QEMU user mode (qemu-<arch>) is supported", NULL);
    }
    if (parse_options(argc, argv, &fd, &want_inline) != 0 || open_ring(&fd) != 0 || map_ring(fd) != 0) {
        return -1;
    }
    /* regs=check compares the write masks with QEMU's own register reads */
    cn_cfg.inline_records = want_inline && !cn_cfg.regs_check && cn_compat_inline_records();
    cn_cfg.target = info->target_name;
    cn_syscall_table_select(info->target_name);
    struct cn_ring_header *r = cn_cfg.ring;
    snprintf(r->target, sizeof(r->target), "%s", info->target_name);
    r->plugin_api = CN_QEMU_PLUGIN_API;
    r->mem_enabled = cn_cfg.record_mem;
    r->regs_state = CN_QEMU_PLUGIN_API < 2 ? CN_REGS_NO_API : cn_cfg.record_regs ? CN_REGS_UNSET : CN_REGS_OFF;
    r->inline_records = cn_cfg.inline_records;
    if (cn_cfg.inline_records) {
        cn_inline_init();
    } else {
        cn_compat_init();
    }
    __atomic_store_n(&r->plugin_ready, 1, __ATOMIC_RELEASE);

    cn_lane_install_fork_handler();
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, vcpu_syscall);
    qemu_plugin_register_vcpu_syscall_ret_cb(id, vcpu_syscall_ret);
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_exit_cb(id, vcpu_exit);
    qemu_plugin_register_atexit_cb(id, plugin_atexit, NULL);
    return 0;
}
