/* The OpenBLAS peer (openblas_peer.h) in a build that found no OpenBLAS: CMake compiles this file
 * instead of openblas_peer.c, so that the rest of Moira builds and the bench can say what is
 * missing. */
#include "bench/openblas_peer.h"

#include <stdio.h>

#define MISSING "this build has no OpenBLAS: install libopenblas-dev (`make deps` does) and rebuild"

bool moira_openblas_available(void) {
    return false;
}

/* Fails with the install hint, so any caller that did not ask moira_openblas_available first
 * still tells its user why. */
moira_status_t moira_openblas_moe_open(const moira_openblas_moe_problem_t *problem, int threads,
                                       moira_openblas_moe_t **out_peer) {
    (void)problem;
    (void)threads;
    *out_peer = NULL;
    return moira_status_make(MOIRA_CODE_UNSUPPORTED, "OpenBLAS peer: %s", MISSING);
}

/* Never reached with a peer (none can be opened); fails the same way. */
moira_status_t moira_openblas_moe_run(moira_openblas_moe_t *peer, double *out_seconds) {
    (void)peer;
    *out_seconds = 0;
    return moira_status_make(MOIRA_CODE_UNSUPPORTED, "OpenBLAS peer: %s", MISSING);
}

/* Nothing was opened, so nothing to close. */
void moira_openblas_moe_close(moira_openblas_moe_t *peer) {
    (void)peer;
}

/* The bench prints this where it would name the OpenBLAS build. */
void moira_openblas_describe(char *out, size_t size) {
    snprintf(out, size, "none (%s)", MISSING);
}
