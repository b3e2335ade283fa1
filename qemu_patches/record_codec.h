/*
 * record_codec.h -- encoding and decoding a packet's heavy records as version
 * 4 stores them (cannoli_format.h, "records on disk"; record_codec.c).
 */
#ifndef CANNOLI_RECORD_CODEC_H
#define CANNOLI_RECORD_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* What the decoders return (a reader turns an error into a ChunkError naming
 * the chunk). */
enum {
    CN_MEM_OK = 0,
    CN_MEM_SHORT = 1,    /* a section holds fewer bytes than its records need */
    CN_MEM_LONG = 2,     /* a section holds bytes no record claims */
    CN_MEM_WIDE = 3,     /* an access wider than 8 bytes, or a value wider than its access */
    CN_MEM_BAD_INFO = 4, /* low info bits out of range, or a link past its field */
};

size_t cn_codec_scratch_size(void);
size_t cn_mem_max_encoded(uint32_t n);
size_t cn_reg_max_encoded(uint32_t n);
size_t cn_mem_encode(const uint64_t *addr, const uint64_t *value, const uint32_t *info, uint32_t n,
                     const uint32_t *exec, uint32_t n_exec, char *out, void *scratch, size_t size[3]);
size_t cn_reg_encode(const uint64_t *value, const uint32_t *info, uint32_t n, const uint32_t *exec,
                     uint32_t n_exec, char *out, void *scratch, size_t size[2]);
int cn_mem_decode(const uint8_t *addr_in, size_t addr_size, const uint8_t *value_in, size_t value_size,
                  const uint8_t *info_in, size_t info_size, uint32_t n, const uint32_t *exec, uint32_t n_exec,
                  uint64_t *addr, uint64_t *value, uint32_t *info, void *scratch);
int cn_reg_decode(const uint8_t *value_in, size_t value_size, const uint8_t *info_in, size_t info_size, uint32_t n,
                  const uint32_t *exec, uint32_t n_exec, uint64_t *value, uint32_t *info, void *scratch);

#endif
