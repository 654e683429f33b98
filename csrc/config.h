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

// The path of one call: the override, else the cost model with a device's costs.
inline MatmulPath resolve_matmul_path(int64_t b, int64_t m, int64_t n, int64_t r, int64_t nnz,
                                      const PathCosts& costs) {
  const MatmulPath forced = matmul_path_override();
  return forced != MatmulPath::kAuto ? forced : choose_matmul_path(b, m, n, r, nnz, costs);
}

}  // namespace sltrain
