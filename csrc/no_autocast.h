// Autocast has no kernel for the sltrain ops and falls through to them, still
// enabled: without this guard it would recast the ATen products inside them.
// Every backend's op bodies hold one.
#pragma once

#include <c10/core/impl/LocalDispatchKeySet.h>

namespace sltrain {

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace sltrain
