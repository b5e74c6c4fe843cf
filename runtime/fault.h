/* Test hooks that make devices fail on purpose, so tests can show that Moira reports device faults
 * clearly and cleans up after them: no crash, no hang, no leak, no half-written output. They are
 * read once, from the environment variable MOIRA_FAULT, a comma-separated list of:
 *
 *   alloc:N        the Nth device buffer allocation of the process fails (1-based, counted over
 *                  all devices), as a driver out of memory would: MOIRA_CODE_OUT_OF_MEMORY
 *   alloc:N+       the Nth allocation and every later one fail
 *   kernel-build   every kernel program a backend compiles at run time (OpenCL's) fails with a
 *                  compile error in its source, as a broken driver or compiler would (the build
 *                  log reaches the user)
 *   lost:DEVICE    DEVICE ("npu:0") is gone after enumeration, as a GPU that fell off the bus:
 *                  queues, buffers and launches on it fail with MOIRA_CODE_DEVICE
 *   slow:DEVICE:MS every kernel launch on DEVICE first waits MS milliseconds, as a device far
 *                  slower than its figures would (a peer rank must wait for it, not give up)
 *
 * Without MOIRA_FAULT every hook returns at once and changes nothing. An entry Moira does not
 * understand is reported once on stderr and ignored. */
#ifndef MOIRA_RUNTIME_FAULT_H
#define MOIRA_RUNTIME_FAULT_H

#include "runtime/device.h"
#include "runtime/status.h"

/* Called by moira_buffer_alloc before the backend allocates: the injected failure, or OK. Counts
 * the allocation. Thread-safe. */
moira_status_t moira_fault_alloc(const moira_device_t *device, size_t bytes);

/* Called where work reaches a device (queue creation, allocation, launches): DEVICE when
 * `device` was declared lost, else OK. `doing` names the attempted action in the message. */
moira_status_t moira_fault_device_lost(const moira_device_t *device, const char *doing);

/* Called before each kernel launch: waits the launch delay slow:DEVICE:MS sets for `device`. */
void moira_fault_slow_launch(const moira_device_t *device);

/* Extra build options for a backend that compiles kernels at run time: the define that switches
 * on a deliberate #error in the kernel source when kernel-build is set, else "". Static storage. */
const char *moira_fault_kernel_build_options(void);

#endif
