/* Measured speeds from a recorded profile applied to a topology (speed.h). */
#include "placement/speed.h"

int moira_topology_apply_speeds(moira_topology_t *topology, const moira_profile_t *profile,
                                FILE *notes) {
    int applied = 0;
    for (int i = 0; i < profile->n_speeds; i++) {
        const moira_profile_speed_t *s = &profile->speeds[i];
        int t = moira_topology_find_target(topology, s->device);
        if (t < 0) {
            if (notes)
                fprintf(notes,
                        "moira: note: the profile's speed of \"%s\" is left out: the topology has "
                        "no such device\n",
                        s->device);
            continue;
        }
        topology->targets[t].time_scale = s->busy_us / s->predicted_us;
        applied++;
        if (notes)
            fprintf(notes,
                    "moira: note: %s ran %.3g x its predicted time in the recorded run; planned "
                    "so\n",
                    s->device, topology->targets[t].time_scale);
    }
    return applied;
}
