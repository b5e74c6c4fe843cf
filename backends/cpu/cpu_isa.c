/* Run-time instruction-set detection for the cpu kernels (cpu_isa.h). */
#include "backends/cpu/cpu_isa.h"
#include "runtime/env.h"

#include <stdlib.h>
#include <string.h>

static const char *const names[MOIRA_CPU_ISA_COUNT] = {"portable", "avx2", "avx512", "avx512_bf16"};

const char *moira_cpu_isa_name(moira_cpu_isa_t isa) {
    return isa >= 0 && isa < MOIRA_CPU_ISA_COUNT ? names[isa] : "unknown";
}

/* GCC's cpu model checks CPUID and, through XGETBV, that the OS saves the AVX and AVX-512
 * register state; a level is supported only when every feature its kernels are compiled with is. */
bool moira_cpu_isa_supported(moira_cpu_isa_t isa) {
    __builtin_cpu_init();
    switch (isa) {
    case MOIRA_CPU_ISA_PORTABLE:
        return true;
    case MOIRA_CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case MOIRA_CPU_ISA_AVX512:
        return moira_cpu_isa_supported(MOIRA_CPU_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
    case MOIRA_CPU_ISA_AVX512_BF16:
        return moira_cpu_isa_supported(MOIRA_CPU_ISA_AVX512) &&
               __builtin_cpu_supports("avx512bf16");
    default:
        return false;
    }
}

/* Detection runs once per call; it is a few CPUID reads, negligible next to any kernel. */
moira_cpu_isa_t moira_cpu_isa_best(void) {
    static const char *const choices[] = {"portable", "avx2", "avx512", "avx512_bf16", NULL};
    int forced = moira_env_choice("MOIRA_CPU_ISA", choices);
    moira_cpu_isa_t cap = forced >= 0 ? (moira_cpu_isa_t)forced : MOIRA_CPU_ISA_COUNT - 1;
    for (int i = cap; i > MOIRA_CPU_ISA_PORTABLE; i--)
        if (moira_cpu_isa_supported((moira_cpu_isa_t)i)) return (moira_cpu_isa_t)i;
    return MOIRA_CPU_ISA_PORTABLE;
}
