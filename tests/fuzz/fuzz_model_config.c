/* Fuzz target: model configs, Moira's YAML and Hugging Face config.json alike (libyaml reads
 * both). A config that parses must pass validation on its own and give sizes the planner and
 * runtime can multiply without overflow (UBSan would report it). */
#include <math.h>

#include "runtime/model_config.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_fuzz_setup();
    moira_model_config_t config;
    moira_status_t status =
        moira_model_config_parse_string((const char *)data, size, "fuzz/config.yaml", &config);
    if (status) {
        moira_fuzz_expect_input_error(status, "model config");
        return 0;
    }
    status = moira_model_config_validate(&config, "fuzz/config.yaml");
    FUZZ_ASSERT(!status, "a parsed config fails validation: %s", moira_status_message(status));
    FUZZ_ASSERT(moira_model_config_equal(&config, &config), "a config differs from itself");
    for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
        if (moira_dtype_is_float((moira_dtype_t)d))
            FUZZ_ASSERT(moira_model_config_expert_bytes(&config, (moira_dtype_t)d) > 0,
                        "expert bytes not positive");
    int64_t moe = moira_model_config_moe_layer_count(&config);
    FUZZ_ASSERT(moe >= 0 && moe <= config.num_hidden_layers, "%lld MoE layers of %lld",
                (long long)moe, (long long)config.num_hidden_layers);
    int64_t counted = 0;
    for (int64_t l = 0; l < config.num_hidden_layers && l < 4096; l++)
        counted += moira_model_config_is_moe_layer(&config, l);
    FUZZ_ASSERT(config.num_hidden_layers > 4096 || counted == moe,
                "is_moe_layer counts %lld, moe_layer_count %lld", (long long)counted,
                (long long)moe);
    double scale = moira_model_config_attention_scale(&config);
    FUZZ_ASSERT(isfinite(scale) && scale > 0, "attention scale %g", scale);
    return 0;
}
