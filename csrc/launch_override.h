// A private override of the CUDA kernels' tile plan and grid, for jkofast's first-use kernel check
// (jkofast/_kernel_check.py). The check runs a small batch, whose own plan is one small tile per
// thread block; a training batch gets larger tiles, and blocks that loop over many tiles with
// float32 gradient totals (mlp_params.h: needs_totals). With the override the check runs those
// code paths too on its small batch. It holds for launches on one CUDA stream, the check's own:
// autograd runs a backward on its forward's stream, and other work (another thread's training
// step, a CUDA graph being captured) on other streams does not see it. The check sets and clears
// it under its lock.
#pragma once

#include <cstdint>
#include <mutex>

namespace jkofast {

struct LaunchOverride {
  int rows = 0;         // > 0: the most stack rows <= rows that fit (tile_plan.h: choose_launch); 0: the usual rule
  int grid = 0;         // > 0: at most this many thread blocks; 0: the usual grid
  uint64_t stream = 0;  // the cudaStream_t it holds on
};

inline std::mutex launch_override_mutex;
inline LaunchOverride launch_override_value;

inline void set_launch_override(const LaunchOverride& o) {
  std::lock_guard<std::mutex> lock(launch_override_mutex);
  launch_override_value = o;
}

inline LaunchOverride launch_override() {
  std::lock_guard<std::mutex> lock(launch_override_mutex);
  return launch_override_value;
}

// The override for a launch on `stream`: none unless it was set for that stream, never for stream
// 0, the CUDA default stream (an override set with 0 is the CPU tests'; the check's stream is one
// of torch's pool streams: shared, round-robin, with other torch.cuda.Stream()s of the process,
// so rarely another thread's work on the same pool stream gets the plans too; same results).
inline LaunchOverride launch_override_on(uint64_t stream) {
  const LaunchOverride o = launch_override();
  return o.stream != 0 && o.stream == stream ? o : LaunchOverride{};
}

}  // namespace jkofast
