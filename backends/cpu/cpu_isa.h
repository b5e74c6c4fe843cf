/* Which SIMD instruction sets the cpu kernels may use, found at run time. Private to
 * backends/cpu/.
 *
 * Every kernel family has one implementation per level, each in its own file compiled with that
 * level's flags; a kernel picks its table once per launch from moira_cpu_isa_best(). A level
 * implies the ones below it. AMX is not among them: no machine this was built on had it, and
 * kernels that were never run are not shipped. */
#ifndef MOIRA_BACKENDS_CPU_ISA_H
#define MOIRA_BACKENDS_CPU_ISA_H

#include <stdbool.h>

typedef enum moira_cpu_isa {
    MOIRA_CPU_ISA_PORTABLE = 0, /* plain C */
    MOIRA_CPU_ISA_AVX2,         /* AVX2 + FMA */
    MOIRA_CPU_ISA_AVX512,       /* AVX-512 F, BW, VL, DQ */
    MOIRA_CPU_ISA_AVX512_BF16,  /* AVX-512 + AVX512_BF16 (vdpbf16ps) */
    MOIRA_CPU_ISA_COUNT,
} moira_cpu_isa_t;

/* "portable", "avx2", "avx512", "avx512_bf16". Static storage. */
const char *moira_cpu_isa_name(moira_cpu_isa_t isa);

/* Whether this CPU (and the OS, which must save the wider registers) runs `isa`. */
bool moira_cpu_isa_supported(moira_cpu_isa_t isa);

/* The highest supported level, capped by the environment variable MOIRA_CPU_ISA (one of the
 * names above) so that a slower path can be chosen for comparison or debugging. */
moira_cpu_isa_t moira_cpu_isa_best(void);

#endif
