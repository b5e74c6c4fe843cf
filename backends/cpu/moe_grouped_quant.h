/* The grouped SwiGLU expert FFN over quantised panels (MXFP4 or INT8, quant_panels.h): the same
 * two stages as moe_grouped.h, with every activation row quantised to int8 per block of 32 once
 * (x per token, h per row) and the int8 tiles doing the products. Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_MOE_GROUPED_QUANT_H
#define MOIRA_BACKENDS_CPU_MOE_GROUPED_QUANT_H

#include "backends/cpu/moe_grouped.h"
#include "backends/cpu/quant_panels.h"

/* Runs one MOE_FFN launch (moe_grouped.h's job; its kernels are not used) whose three weights
 * are packed quantised panels of one format, with `tile` (moira_cpu_qtile_kernel's for it). */
moira_status_t moira_cpu_grouped_qffn_run(moira_threadpool_t *pool,
                                          const moira_cpu_grouped_ffn_t *job,
                                          moira_cpu_qtile_fn tile);

#endif
