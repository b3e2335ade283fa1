/*
 * qemu_plugin_api.h -- the few QEMU TCG plugin API items Cannoli DB uses.
 *
 * Debian does not ship QEMU's qemu-plugin.h, so the declarations are written
 * here, per plugin API version.  CN_QEMU_PLUGIN_API is set by the build
 * (cannoli_db/native/__init__.py) from the QEMU version it detected:
 *   QEMU 7.2 - 8.2 -> 1;  9.0 -> 2;  9.1 -> 3;  9.2 / 10.0 -> 4;  10.1+ -> 4
 * (a QEMU accepts any plugin between its minimum and current version, and
 * version 5 added nothing this plugin uses).
 *
 * Every difference between API versions lives here (declarations and the
 * static inline cn_compat_* helpers at the end) and in plugin_compat.c (the
 * ones that keep state); the rest of the plugin is version-independent.
 * Version 2 removed the version-1 inline operations, so a plugin built for 1
 * is refused by QEMU 9+, and one built for >= 2 by QEMU 7.2 - 8.2: the
 * recorder builds one plugin per API version.
 */
#ifndef CN_QEMU_PLUGIN_API_H
#define CN_QEMU_PLUGIN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef CN_QEMU_PLUGIN_API
#error "CN_QEMU_PLUGIN_API must be defined by the build"
#endif
#if CN_QEMU_PLUGIN_API < 1 || CN_QEMU_PLUGIN_API > 4
#error "this plugin supports QEMU plugin API versions 1 to 4"
#endif

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;

typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;

struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

enum qemu_plugin_mem_rw {
    QEMU_PLUGIN_MEM_R = 1,
    QEMU_PLUGIN_MEM_W,
    QEMU_PLUGIN_MEM_RW,
};

typedef uint32_t qemu_plugin_meminfo_t;

enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
    QEMU_PLUGIN_INLINE_STORE_U64, /* API >= 2 */
    QEMU_PLUGIN_INLINE_RECORD,    /* qemu_patches/0004 only (see the end of this file) */
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                                          uint64_t vaddr, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2,
                                              uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*qemu_plugin_vcpu_syscall_ret_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_idx,
                                                  int64_t num, int64_t ret);

void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_vcpu_exit_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_vcpu_syscall_ret_cb(qemu_plugin_id_t id,
                                              qemu_plugin_vcpu_syscall_ret_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void *qemu_plugin_insn_haddr(const struct qemu_plugin_insn *insn);

/* Weak: QEMU 10.0's user-mode builds do not define these four (they went to
 * the system-mode file); a missing one is NULL and its fact comes from QEMU's
 * page log instead (cannoli_db/layout_log.py). */
__attribute__((weak)) uint64_t qemu_plugin_start_code(void);
__attribute__((weak)) uint64_t qemu_plugin_end_code(void);
__attribute__((weak)) uint64_t qemu_plugin_entry_code(void);
__attribute__((weak)) const char *qemu_plugin_path_to_binary(void);

unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
bool qemu_plugin_mem_is_big_endian(qemu_plugin_meminfo_t info);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);

#if CN_QEMU_PLUGIN_API == 1
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
#else
/* GLib's containers as QEMU passes them (QEMU links GLib; these two layouts
 * are GLib's stable public ABI), and the GLib calls the plugin makes. */
typedef struct { char *data; unsigned int len; } GArray;
typedef struct { uint8_t *data; unsigned int len; } GByteArray;
GByteArray *g_byte_array_new(void);
GByteArray *g_byte_array_set_size(GByteArray *array, unsigned int length);
uint8_t *g_byte_array_free(GByteArray *array, int free_segment);
char *g_array_free(GArray *array, int free_segment);

struct qemu_plugin_scoreboard;
typedef struct {
    struct qemu_plugin_scoreboard *score;
    size_t offset;
} qemu_plugin_u64;

struct qemu_plugin_register;
typedef struct {
    struct qemu_plugin_register *handle;
    const char *name;
    const char *feature;
} qemu_plugin_reg_descriptor;

void qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(struct qemu_plugin_insn *insn,
                                                         enum qemu_plugin_op op,
                                                         qemu_plugin_u64 entry, uint64_t imm);
struct qemu_plugin_scoreboard *qemu_plugin_scoreboard_new(size_t element_size);
uint64_t qemu_plugin_u64_get(qemu_plugin_u64 entry, unsigned int vcpu_index);
GArray *qemu_plugin_get_registers(void);
int qemu_plugin_read_register(struct qemu_plugin_register *handle, GByteArray *buf);
#endif

#if CN_QEMU_PLUGIN_API <= 2
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
#else
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn *insn, void *dest, size_t len);
#endif

#if CN_QEMU_PLUGIN_API >= 4
enum qemu_plugin_mem_value_type {
    QEMU_PLUGIN_MEM_VALUE_U8,
    QEMU_PLUGIN_MEM_VALUE_U16,
    QEMU_PLUGIN_MEM_VALUE_U32,
    QEMU_PLUGIN_MEM_VALUE_U64,
    QEMU_PLUGIN_MEM_VALUE_U128,
};
typedef struct {
    enum qemu_plugin_mem_value_type type;
    union {
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        uint64_t u64;
        struct {
            uint64_t low;
            uint64_t high;
        } u128;
    } data;
} qemu_plugin_mem_value;
qemu_plugin_mem_value qemu_plugin_mem_get_value(qemu_plugin_meminfo_t info);
#endif

#if CN_QEMU_PLUGIN_API >= 4
/* qemu_patches/0004-plugins-inline-record.patch: records that QEMU's
 * generated code appends to a per-vCPU buffer (the patch's qemu-plugin.h
 * documents them).  Weak: a QEMU without the patch leaves them NULL, and
 * the plugin records through callbacks there (cn_compat_inline_records). */
typedef struct qemu_plugin_record_buffer {
    uint8_t *base;
    uint8_t *cursor;
    uint8_t *limit;
    uint8_t *end;
    void (*full)(unsigned int vcpu_index, void *userdata);
    void *userdata;
} qemu_plugin_record_buffer;
#define QEMU_PLUGIN_RECORD_TB_MAX (256 * 1024)
#define QEMU_PLUGIN_RECORD_MAX_REGS 64
struct qemu_plugin_record_regs;
__attribute__((weak)) int qemu_plugin_inline_record_version(void);
__attribute__((weak)) bool qemu_plugin_record_reg_supported(const char *name);
__attribute__((weak)) struct qemu_plugin_record_regs *qemu_plugin_record_regs_new(const char *const *names,
                                                                                   size_t n);
__attribute__((weak)) void qemu_plugin_register_vcpu_tb_record_regs_per_vcpu(
    struct qemu_plugin_tb *tb, qemu_plugin_u64 entry, const struct qemu_plugin_record_regs *regs);
void qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                                       qemu_plugin_u64 entry, uint64_t imm);
void qemu_plugin_register_vcpu_mem_inline_per_vcpu(struct qemu_plugin_insn *insn, enum qemu_plugin_mem_rw rw,
                                                   enum qemu_plugin_op op, qemu_plugin_u64 entry,
                                                   uint64_t imm);
void *qemu_plugin_scoreboard_find(struct qemu_plugin_scoreboard *score, unsigned int vcpu_index);
#endif

/* ---- version-dependent helpers ------------------------------------------ */
#include <string.h>

/* Copy an instruction's bytes; API >= 3 replaced qemu_plugin_insn_data's
 * pointer with a copy-out call. */
static inline size_t cn_compat_insn_bytes(const struct qemu_plugin_insn *insn,
                                          void *dest, size_t len)
{
#if CN_QEMU_PLUGIN_API >= 3
    return qemu_plugin_insn_data(insn, dest, len);
#else
    size_t n = qemu_plugin_insn_size(insn);
    if (n > len) {
        n = len;
    }
    memcpy(dest, qemu_plugin_insn_data(insn), n);
    return n;
#endif
}

/* The value of a memory access of 2^shift bytes, in (up to) two 8-byte
 * halves; returns how many.  API >= 4 hands the plugin the value the access
 * moved; before, it is read back from guest memory after the access (QEMU 7.2
 * never makes one wider than 8 bytes, QEMU 9.0 / 9.1 do). */
static inline unsigned cn_compat_mem_value(qemu_plugin_meminfo_t info, uint64_t host_addr,
                                           unsigned shift, uint64_t out[2])
{
#if CN_QEMU_PLUGIN_API >= 4
    (void)host_addr, (void)shift;
    qemu_plugin_mem_value v = qemu_plugin_mem_get_value(info);
    switch (v.type) {
    case QEMU_PLUGIN_MEM_VALUE_U8: out[0] = v.data.u8; return 1;
    case QEMU_PLUGIN_MEM_VALUE_U16: out[0] = v.data.u16; return 1;
    case QEMU_PLUGIN_MEM_VALUE_U32: out[0] = v.data.u32; return 1;
    case QEMU_PLUGIN_MEM_VALUE_U64: out[0] = v.data.u64; return 1;
    default: out[0] = v.data.u128.low; out[1] = v.data.u128.high; return 2;
    }
#else
    (void)info;
    const void *host = (const void *)(uintptr_t)host_addr;
    switch (shift) {
    case 0: { uint8_t v; memcpy(&v, host, 1); out[0] = v; return 1; }
    case 1: { uint16_t v; memcpy(&v, host, 2); out[0] = v; return 1; }
    case 2: { uint32_t v; memcpy(&v, host, 4); out[0] = v; return 1; }
    case 3: memcpy(out, host, 8); return 1;
    default: memcpy(out, host, 16); return 2;
    }
#endif
}

/* Does this QEMU write records from its generated code (qemu_patches/0004)? */
static inline bool cn_compat_inline_records(void)
{
#if CN_QEMU_PLUGIN_API >= 4
    return qemu_plugin_inline_record_version && qemu_plugin_inline_record_version() == 1 &&
           qemu_plugin_record_regs_new && qemu_plugin_register_vcpu_tb_record_regs_per_vcpu;
#else
    return false;
#endif
}

/* plugin_compat.c: the block-end counters (see plugin_exec.c).  API 1 counts
 * in the ring with a shared inline add (updates can be lost between threads);
 * API >= 2 counts per vCPU in a scoreboard (exact, but invisible to the
 * recorder when QEMU dies). */
struct cn_tb;
void cn_compat_init(void);
/* counters never lose an update: an unmoved counter always means "cut short" */
extern const bool cn_compat_exact_block_ends;
void cn_compat_count_block_end(struct qemu_plugin_tb *tb, struct cn_tb *d);
/* A block starts on this vCPU: API >= 2 reads its counter here, once. */
void cn_compat_block_start(unsigned int vcpu_index);
/* The counter of block d (API 1), or of the vCPU as the block started (API >= 2). */
uint64_t cn_compat_block_ends(const struct cn_tb *d, unsigned int vcpu_index);

#endif
