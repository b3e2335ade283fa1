/*
 * record_codec.h -- encoding and decoding a packet's heavy records as version
 * 4 stores them (cannoli_format.h, "records on disk"; record_codec.c).
 */
#ifndef CANNOLI_RECORD_CODEC_H
#define CANNOLI_RECORD_CODEC_H

#include <stddef.h>
#include <stdint.h>

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
