/* A cpu device buffer: host memory, plus the packed copies of weights the kernels made from it.
 * Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_BUFFER_H
#define MOIRA_BACKENDS_CPU_BUFFER_H

#include <pthread.h>
#include <stdatomic.h>

#include "backends/cpu/host_memory.h"
#include "runtime/device.h"

typedef struct moira_cpu_packed moira_cpu_packed_t;

typedef struct moira_cpu_buffer {
    moira_buffer_t base;
    moira_cpu_host_region_t memory; /* owned */
    int numa_node;                  /* where the memory (and its packed copies) live; -1 any */
    pthread_mutex_t packed_mutex;   /* guards `packed` */
    /* Packed copies of weight windows of this buffer (owned references), dropped when any byte
     * of their window is written. Non-NULL is the hint that writes must check. */
    _Atomic(moira_cpu_packed_t *) packed;
} moira_cpu_buffer_t;

#endif
