/* The fixed model and topology the placement fuzz targets parse their inputs against: EPLB's
 * published example (tests/data/placement), loaded once per process. */
#ifndef MOIRA_TESTS_FUZZ_PLACEMENT_FIXTURES_H
#define MOIRA_TESTS_FUZZ_PLACEMENT_FIXTURES_H

#include "placement/topology.h"
#include "runtime/model_config.h"

/* Both borrowed: valid until the process exits. */
const moira_model_config_t *moira_fuzz_model(void);
const moira_topology_t *moira_fuzz_topology(void);

#endif
