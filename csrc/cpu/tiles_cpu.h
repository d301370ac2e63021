// Splitting a batch into tiles for at::parallel_for, so torch.set_num_threads governs the ops.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <cstdint>

namespace jkofast::cpu {

// range_fn(first_sample, end_sample, thread) once per thread, on a contiguous range of whole
// tiles: the thread makes its workspace once, then walks its tiles with each_tile(). Per-thread
// gradient shares are indexed by `thread` and summed in a fixed order afterwards.
template <typename RangeFn>
void for_each_tile_range(int64_t batch, int64_t tile, RangeFn&& range_fn) {
  const int64_t tiles = (batch + tile - 1) / tile;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs inside go through the dispatcher again: stay below autograd, as the caller is.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    range_fn(begin * tile, std::min(end * tile, batch), at::get_thread_num());
  });
}

// tile_fn(first_sample, samples) for consecutive tiles of [first, end).
template <typename TileFn>
void each_tile(int64_t first, int64_t end, int64_t tile, TileFn&& tile_fn) {
  for (int64_t b = first; b < end; b += tile) tile_fn(b, std::min(tile, end - b));
}

}  // namespace jkofast::cpu
