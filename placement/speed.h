/* The re-planning loop's speed half (issue 15): a run recorded with --record-profile says how
 * long each device was busy next to what the cost model predicted for the same load; planning
 * with that profile scales each such target's predicted time by the ratio, so a device that ran
 * slower (or faster) than its figures say is planned as it really ran. */
#ifndef MOIRA_PLACEMENT_SPEED_H
#define MOIRA_PLACEMENT_SPEED_H

#include <stdio.h>

#include "placement/profile.h"
#include "placement/topology.h"

/* Sets time_scale = busy / predicted on every target the profile's speeds name; a name the
 * topology lacks (a profile recorded on another machine) is left out and, with `notes` (may be
 * NULL), said so there, as is every scale applied. Returns how many targets were scaled. */
int moira_topology_apply_speeds(moira_topology_t *topology, const moira_profile_t *profile,
                                FILE *notes);

#endif
