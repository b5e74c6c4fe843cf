/* What every plan, made by the planner or read from a file, must satisfy, checked by the
 * topology, profile and plan fuzz targets alike. */
#ifndef MOIRA_TESTS_FUZZ_PLAN_CHECK_H
#define MOIRA_TESTS_FUZZ_PLAN_CHECK_H

#include "placement/plan.h"

/* Validates `plan` against `topology`, draws it as SVG into the scratch directory, writes it as
 * YAML and as JSON into memory and reads both back: the same replicas must come out. Aborts on
 * any failure. */
void moira_fuzz_check_plan(const moira_plan_t *plan, const moira_topology_t *topology,
                           const moira_model_config_t *model);

#endif
