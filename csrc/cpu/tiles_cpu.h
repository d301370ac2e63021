// Splitting a batch into tiles for at::parallel_for, so torch.set_num_threads governs the ops.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <cstdint>

namespace jkofast::cpu {

// How many parts for_each_tile_range splits a batch into: one per intra-op thread, at most one
// per tile, at least one.
inline int64_t tile_parts(int64_t batch, int64_t tile) {
  const int64_t tiles = (batch + tile - 1) / tile;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
}

// The batch's tiles in `parts` contiguous ranges, each handed once to
// range_fn(first_sample, end_sample, part); at::parallel_for spreads the parts over the threads,
// and a thread makes its workspace once per part, then walks the part's tiles with each_tile().
// Gradient shares are indexed by `part`, not by thread id: which thread runs a part, and how many
// threads the OpenMP runtime really starts, cannot change where a tile's gradient lands, so the
// shares, summed in part order afterwards, repeat bit for bit.
template <typename RangeFn>
void for_each_tile_range(int64_t batch, int64_t tile, int64_t parts, RangeFn&& range_fn) {
  const int64_t tiles = (batch + tile - 1) / tile;
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs inside go through the dispatcher again: stay below autograd, as the caller is.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t t0 = tiles * p / parts, t1 = tiles * (p + 1) / parts;
      if (t0 < t1) range_fn(t0 * tile, std::min(t1 * tile, batch), p);
    }
  });
}

// tile_fn(first_sample, samples) for consecutive tiles of [first, end).
template <typename TileFn>
void each_tile(int64_t first, int64_t end, int64_t tile, TileFn&& tile_fn) {
  for (int64_t b = first; b < end; b += tile) tile_fn(b, std::min(tile, end - b));
}

}  // namespace jkofast::cpu
