/*
 * fault_point.h -- where in a block a signal stopped it (fault_point.c).
 */
#ifndef CN_FAULT_POINT_H
#define CN_FAULT_POINT_H

#include <stdint.h>

/* A signal stopped a block of n instructions (sizes[i] bytes each, code at pc)
 * after `accessed` = 1 + the index of the last instruction that completed a
 * memory access (0: none).  Returns how many instructions started: the
 * faulting one is the first at index >= accessed that can fault.  target is
 * QEMU's target name ("x86_64"). */
__attribute__((visibility("default")))
uint32_t cn_fault_point(const char *target, uint64_t pc, const uint8_t *code, const uint8_t *sizes,
                        uint32_t n, uint32_t accessed);

#endif
