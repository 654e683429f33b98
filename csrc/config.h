// Process-wide settings of sl_matmul, set from Python through
// torch.ops.sltrain.set_matmul_config (sltrain_ext.matmul_config).
#pragma once

#include <cstdint>

#include "common/cost_model.h"

namespace sltrain {

// The path every call takes, or kAuto for the cost model's choice.
MatmulPath matmul_path_override();

// Bytes the materialised path may spend on W (and dW) row chunks.
int64_t matmul_workspace_bytes();

}  // namespace sltrain
