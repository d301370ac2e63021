// A private override of the CUDA kernels' tile plan and grid, for jkofast's first-use kernel check
// (jkofast/_kernel_check.py). The check runs a small batch, whose own plan is one small tile per
// thread block; a training batch gets larger tiles, and blocks that loop over many tiles with
// float32 gradient totals (mlp_params.h: needs_totals). With the override the check runs those
// code paths too on its small batch. Process-wide, not per thread: a backward runs on autograd's
// device thread. The check sets and clears it under its lock; another thread's launch meanwhile
// gets the same numbers up to the order of float sums (and takes a little longer).
#pragma once

#include <atomic>
#include <cstdint>

namespace jkofast {

struct LaunchOverride {
  int rows = 0;  // > 0: the largest stack rows <= rows that fit (clamped to the kernels' range); 0: the usual rule
  int grid = 0;  // > 0: at most this many thread blocks; 0: the usual grid
};

// (one word: a launch never reads rows from one setting and grid from another)
inline std::atomic<uint64_t> launch_override_word{0};

inline void set_launch_override(LaunchOverride o) {
  launch_override_word.store((uint64_t(uint32_t(o.rows)) << 32) | uint32_t(o.grid));
}

inline LaunchOverride launch_override() {
  const uint64_t word = launch_override_word.load();
  return {int(uint32_t(word >> 32)), int(uint32_t(word))};
}

}  // namespace jkofast
