/*
 * insn_counter.c -- an independent instruction counter for the tests.
 *
 * Shares no code with the Cannoli DB plugin: every instruction gets its own
 * execution callback that atomically bumps one counter, so it counts exactly
 * the instructions QEMU started, whatever a block's shape.  Slow, and exact.
 * Usage: qemu-x86_64 -plugin ./insn_counter.so,out=FILE ./app
 * At exit it writes the count (decimal) to FILE.  A forked child starts its
 * own count at 0 and writes it to FILE.<pid>.
 *
 * Program images (a QEMU that follows exec loads this plugin again, with the
 * same out=FILE, in the new program's QEMU): each image counts its own
 * instructions and writes them to its own file.  At an execve or execveat the
 * image writes its count so far (the exec may replace it: no exit comes;
 * if the call fails the count goes on and is written again later).  A new
 * image claims its file when it starts: FILE if no image has (the recorded
 * program), else FILE.<pid>.<k> for the first k = 1, 2, ... not yet taken:
 * k numbers the programs process <pid> exec'd, in order.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct { const char *target_name; struct { int min; int cur; } version; bool system_emulation;
                 union { struct { int smp_vcpus; int max_vcpus; } system; }; } qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned int, void *), int, void *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t,
                                          uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);

/* The calls above are the same in plugin API 1 (QEMU 7.2) and 4 (QEMU 10);
 * only the version a QEMU accepts differs: build with -DCOUNTER_API=4 for 10. */
#ifndef COUNTER_API
#define COUNTER_API 1
#endif
__attribute__((visibility("default"))) int qemu_plugin_version = COUNTER_API;

static uint64_t count;
static char base_path[4000]; /* out=FILE */
static char out_path[4096];  /* this image's file */

/* execve and execveat, per target: where this image may end without an exit */
static const struct { const char *target; int64_t execve, execveat; } exec_calls[] = {
    { "x86_64", 59, 322 }, { "aarch64", 221, 281 }, { "riscv64", 221, 281 }, { "arm", 11, 387 },
    { "mipsel", 4011, 4356 },
};
static int64_t exec_nr[2] = { -1, -1 };

static void on_insn(unsigned int vcpu, void *udata)
{
    (void)vcpu, (void)udata;
    __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
}

static void on_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); i++) {
        qemu_plugin_register_vcpu_insn_exec_cb(qemu_plugin_tb_get_insn(tb, i), on_insn, 0, NULL);
    }
}

static void in_forked_child(void)
{
    __atomic_store_n(&count, 0, __ATOMIC_RELAXED);
    snprintf(out_path, sizeof(out_path), "%s.%d", base_path, (int)getpid());
}

static void write_count(void)
{
    FILE *f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)__atomic_load_n(&count, __ATOMIC_RELAXED));
        fclose(f);
    }
}

static void on_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id, (void)udata;
    write_count();
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu, (void)a1, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num == exec_nr[0] || num == exec_nr[1]) {
        write_count();
    }
}

/* This image's file: FILE for the first image, FILE.<pid>.<k> for the k-th exec of process <pid> */
static int claim_out_path(void)
{
    snprintf(out_path, sizeof(out_path), "%s", base_path);
    for (int k = 1; k < 10000; k++) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (errno != EEXIST) {
            return -1;
        }
        snprintf(out_path, sizeof(out_path), "%s.%d.%d", base_path, (int)getpid(), k);
    }
    return -1;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv)
{
    if (argc != 1 || strncmp(argv[0], "out=", 4) != 0 || strlen(argv[0] + 4) >= sizeof(base_path)) {
        fprintf(stderr, "insn_counter: usage: -plugin insn_counter.so,out=FILE\n");
        return -1;
    }
    snprintf(base_path, sizeof(base_path), "%s", argv[0] + 4);
    if (claim_out_path() != 0) {
        fprintf(stderr, "insn_counter: cannot create %s: %s\n", out_path, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < sizeof(exec_calls) / sizeof(exec_calls[0]); i++) {
        if (strcmp(info->target_name, exec_calls[i].target) == 0) {
            exec_nr[0] = exec_calls[i].execve;
            exec_nr[1] = exec_calls[i].execveat;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    pthread_atfork(NULL, NULL, in_forked_child);
    return 0;
}
