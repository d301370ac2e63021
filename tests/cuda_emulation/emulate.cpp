// Runs the CUDA kernels of csrc/cuda/ on the CPU through cuda_shim.h, for tests/test_cuda_emulation.py
// (loaded with ctypes). The entry points fill the same parameter structs as the torch glue
// (csrc/cuda/*_cuda.cpp), with a chosen stack height and grid so that tests can force chunked
// tangent rows, several tiles per block and several gradient parts; workspaces start as NaN.
#define JKOFAST_EMULATE_CUDA 1
#include "cuda_shim.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "cuda/grad_reduce_kernel.cuh"
#include "cuda/mlp_field_kernel.cuh"
#include "cuda/jko_block_loss_kernel.cuh"
#include "cuda/rk4_block_kernel.cuh"

namespace {

using namespace jkofast;
using namespace jkofast::cuda;

int g_schedule = 0;     // emu_set_schedule
int g_smem_offset = 0;  // emu_set_smem_offset

// Device memory as cudaMalloc gives it: 256-byte aligned (the alignment checks in cuda_shim.h rely on it).
template <typename T>
struct DeviceAllocator {
  using value_type = T;
  DeviceAllocator() = default;
  template <typename U>
  DeviceAllocator(const DeviceAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(256))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(256)); }
  friend bool operator==(const DeviceAllocator&, const DeviceAllocator&) { return true; }
};
template <typename T>
using DeviceBuffer = std::vector<T, DeviceAllocator<T>>;

// One launch: `grid` blocks of 256 threads, one block at a time. Every block's state lives until
// the launch ends: under ThreadSanitizer freeing a block's shared memory before end_launch would
// be a host access unordered with its threads' (and ordering it would order the blocks).
template <typename Params>
void run(void (*kernel)(Params), const Params& p, int grid, int64_t smem_bytes) {
  struct BlockRun {
    emu::Block block;
    DeviceBuffer<unsigned char> smem;
    std::unique_ptr<emu::Scheduler> scheduler;
  };
  std::vector<std::unique_ptr<BlockRun>> blocks;
  for (int g = 0; g < grid; ++g) {
    auto& b = *blocks.emplace_back(std::make_unique<BlockRun>());
    emu::Block& block = b.block;
    block.barrier.size = tile::kThreads;
    for (auto& warp : block.warps) warp.size = 32;
    b.smem.assign(size_t(g_smem_offset + (smem_bytes > 0 ? smem_bytes : 1)), 0xFF);  // NaN bytes
    block.smem = b.smem.data() + g_smem_offset;
    block.smem_bytes = size_t(smem_bytes > 0 ? smem_bytes : 1);
    {
      emu::tsan::Unchecked unchecked;  // the bookkeeping the previous block's threads read
      emu::block = &block;
      emu::block_idx = {unsigned(g), 0, 0};
      emu::grid_dim = {unsigned(grid), 0, 0};
    }
    b.scheduler = std::make_unique<emu::Scheduler>(block, tile::kThreads, g_schedule, [&] { kernel(p); });
    block.scheduler = b.scheduler.get();
    b.scheduler->run();
  }
  emu::end_launch();
}

// Shared-memory bank conflict of one request (the 4-byte words it touches): the most distinct words
// that fall on one of the 32 banks (1: conflict-free).
int request_ways(const std::vector<int64_t>& words) {
  std::vector<std::vector<int64_t>> bank(32);
  for (const int64_t w : words) bank[size_t(w % 32)].push_back(w);
  int worst = 0;
  for (auto& b : bank) {
    std::sort(b.begin(), b.end());
    worst = std::max(worst, int(std::unique(b.begin(), b.end()) - b.begin()));
  }
  return worst;
}

template <typename T>
DeviceBuffer<T> nan_buffer(int64_t count) {
  return DeviceBuffer<T>(size_t(count > 0 ? count : 1), std::numeric_limits<T>::quiet_NaN());
}

// ints: itemsize, tf32, backward, rows, grid, batch, dim, hidden, layers, time, activation,
//       divergence, tangent_rows, [t_stride | steps], [- | tableau]
struct Common {
  int tf32, backward, rows, grid;
  int64_t batch;
  int dim, hidden, layers, time, activation, divergence, tangent_rows;
};

Common read_common(const int64_t* ints) {
  return {int(ints[1]), int(ints[2]), int(ints[3]), int(ints[4]), ints[5], int(ints[6]), int(ints[7]),
          int(ints[8]), int(ints[9]), int(ints[10]), int(ints[11]), int(ints[12])};
}

template <typename T>
MlpView<T> read_net(const Common& c, double beta, void* const* weights, void* const* biases) {
  MlpView<T> net{};
  net.layers = c.layers;
  net.dim = c.dim;
  net.input_dim = c.dim + c.time;
  net.hidden = c.hidden;
  net.activation = Activation(c.activation);
  net.beta = T(beta);
  for (int l = 0; l < c.layers; ++l) {
    net.weights[l] = static_cast<const T*>(weights[l]);
    net.biases[l] = static_cast<const T*>(biases[l]);
  }
  return net;
}

// A backward kernel's gradient layout, per-block partials (and their double totals for float when a
// block runs several tiles, the glue's rule) and hidden-layer scratch (NaN-filled), wired into its
// params: what the glue's BackwardBuffers are on the GPU.
template <typename T>
struct GradBuffers {
  DeviceBuffer<T> partials, scratch;
  DeviceBuffer<double> totals;
  template <typename Params>
  GradBuffers(const Common& c, Params& p, int tiles_per_total) {
    p.layout = make_grad_layout(c.dim, c.dim + c.time, c.hidden, c.layers);
    partials = nan_buffer<T>(c.grid * p.layout.per_block);
    scratch = nan_buffer<T>(int64_t(c.grid) * (c.layers - 1) * p.plan.rows * c.hidden);
    p.partials = partials.data();
    p.scratch = scratch.data();
    if (std::is_same_v<T, float> && needs_totals(tile::ceil_div(c.batch, p.plan.samples), c.grid, tiles_per_total)) {
      totals = nan_buffer<double>(c.grid * p.layout.per_block);
      p.totals = totals.data();
    }
  }
  const double* totals_or_null() const { return totals.empty() ? nullptr : totals.data(); }
};

template <typename T>
void reduce(const GradBuffers<T>& buffers, int grid, const GradLayout& layout, const MlpView<T>& net,
            void* const* grad_w, void* const* grad_b) {
  ReduceParams<T> r{};
  r.partials = buffers.partials.data();
  r.totals = buffers.totals_or_null();
  r.blocks = grid;
  r.layout = layout;
  r.layers = net.layers;
  for (int l = 0; l < net.layers; ++l) {
    r.out_rows[l] = l == net.layers - 1 ? net.dim : net.hidden;
    r.out_cols[l] = l == 0 ? net.input_dim : net.hidden;
    r.grad_weights[l] = static_cast<T*>(grad_w[l]);
    r.grad_biases[l] = static_cast<T*>(grad_b[l]);
  }
  run(grad_reduce_kernel<T>, r, 2, 0);  // 2 blocks: the kernel's grid-stride loop runs too
}

// ptrs: x, t, probes, f, div, grad_f, grad_div, grad_x, grad_t, weights[16], biases[16],
//       grad_weights[16], grad_biases[16]
template <typename T>
int field(const int64_t* ints, const double* reals, void* const* ptrs) {
  const Common c = read_common(ints);
  FieldParams<T> p{};
  p.net = read_net<T>(c, reals[0], ptrs + 9, ptrs + 25);
  p.plan = tile::make_plan(c.dim, c.dim + c.time, c.hidden, c.tangent_rows, sizeof(T), c.rows);
  p.batch = c.batch;
  p.x = static_cast<const T*>(ptrs[0]);
  p.t = static_cast<const T*>(ptrs[1]);
  p.t_stride = ints[13];
  p.divergence = Divergence(c.divergence);
  p.probes = static_cast<const T*>(ptrs[2]);
  p.tangent_rows = c.tangent_rows;
  const bool tf32 = c.tf32 != 0;
  if (!c.backward) {
    p.f = static_cast<T*>(ptrs[3]);
    p.div = static_cast<T*>(ptrs[4]);
    if constexpr (sizeof(T) == 4) {
      run(tf32 ? mlp_field_forward_kernel<float, true> : mlp_field_forward_kernel<float, false>, p, c.grid,
          p.plan.smem_bytes);
    } else {
      run(mlp_field_forward_kernel<double, false>, p, c.grid, p.plan.smem_bytes);
    }
    return 0;
  }
  p.grad_f = static_cast<const T*>(ptrs[5]);
  p.grad_div = static_cast<const T*>(ptrs[6]);
  p.grad_x = static_cast<T*>(ptrs[7]);
  p.grad_t = static_cast<T*>(ptrs[8]);
  const GradBuffers<T> buffers(c, p, field_tiles_per_total(p.plan));
  if constexpr (sizeof(T) == 4) {
    run(tf32 ? mlp_field_backward_kernel<float, true> : mlp_field_backward_kernel<float, false>, p, c.grid,
        p.plan.smem_bytes);
  } else {
    run(mlp_field_backward_kernel<double, false>, p, c.grid, p.plan.smem_bytes);
  }
  reduce(buffers, c.grid, p.layout, p.net, ptrs + 41, ptrs + 57);
  return 0;
}

// The integration settings both rk4 entry points read: ints as Common plus steps, tableau;
// reals: beta, t0, dt; x0, probes and the weights and biases from ptrs at the given places.
template <typename T>
Rk4Params<T> read_rk4(const Common& c, const int64_t* ints, const double* reals, void* const* ptrs, int weights_at) {
  Rk4Params<T> p{};
  p.net = read_net<T>(c, reals[0], ptrs + weights_at, ptrs + weights_at + 16);
  p.plan = tile::make_plan(c.dim, c.dim + c.time, c.hidden, c.tangent_rows, sizeof(T), c.rows);
  p.batch = c.batch;
  p.steps = int(ints[13]);
  p.time = c.time != 0;
  p.tableau = butcher_tableau(Tableau(ints[14]));
  p.t0 = reals[1];
  p.dt = reals[2];
  p.divergence = Divergence(c.divergence);
  p.probes = static_cast<const T*>(ptrs[1]);
  p.tangent_rows = c.tangent_rows;
  p.x0 = static_cast<const T*>(ptrs[0]);
  return p;
}

// reals: beta, t0, dt
// ptrs: x0, probes, x1, logdet, kinetic, states, grad_x1, grad_logdet, grad_kinetic, saved_states,
//       grad_x, weights[16], biases[16], grad_weights[16], grad_biases[16]
template <typename T>
int rk4(const int64_t* ints, const double* reals, void* const* ptrs) {
  const Common c = read_common(ints);
  Rk4Params<T> p = read_rk4<T>(c, ints, reals, ptrs, 11);
  const int64_t plane = c.batch * c.dim;
  auto stage_velocities = nan_buffer<T>(4 * plane);
  p.stage_velocities = stage_velocities.data();
  const bool tf32 = c.tf32 != 0;
  if (!c.backward) {
    p.x1 = static_cast<T*>(ptrs[2]);
    p.logdet = static_cast<T*>(ptrs[3]);
    p.kinetic = static_cast<T*>(ptrs[4]);
    p.states = static_cast<T*>(ptrs[5]);
    if constexpr (sizeof(T) == 4) {
      run(tf32 ? rk4_block_forward_kernel<float, true> : rk4_block_forward_kernel<float, false>, p, c.grid,
          p.plan.smem_bytes);
    } else {
      run(rk4_block_forward_kernel<double, false>, p, c.grid, p.plan.smem_bytes);
    }
    return 0;
  }
  p.grad_x1 = static_cast<const T*>(ptrs[6]);
  p.grad_logdet = static_cast<const T*>(ptrs[7]);
  p.grad_kinetic = static_cast<const T*>(ptrs[8]);
  p.saved_states = static_cast<const T*>(ptrs[9]);
  p.grad_x = static_cast<T*>(ptrs[10]);
  auto stage_input_grads = nan_buffer<T>(4 * plane);
  auto stage_grads = nan_buffer<T>(plane);
  p.stage_input_grads = stage_input_grads.data();
  p.stage_grads = stage_grads.data();
  const GradBuffers<T> buffers(c, p, kRk4TilesPerTotal);
  if constexpr (sizeof(T) == 4) {
    run(tf32 ? rk4_block_backward_kernel<float, true> : rk4_block_backward_kernel<float, false>, p, c.grid,
        p.plan.smem_bytes);
  } else {
    run(rk4_block_backward_kernel<double, false>, p, c.grid, p.plan.smem_bytes);
  }
  reduce(buffers, c.grid, p.layout, p.net, ptrs + 43, ptrs + 59);
  return 0;
}

// ints as rk4; reals: beta, t0, dt, endpoint_weight, path_weight
// ptrs: x0, probes, terms, grad_x0, weights[16], biases[16], grad_weights[16], grad_biases[16]
template <typename T>
int jko_loss(const int64_t* ints, const double* reals, void* const* ptrs) {
  const Common c = read_common(ints);
  JkoLossParams<T> lp{};
  Rk4Params<T>& p = lp.rk4;
  p = read_rk4<T>(c, ints, reals, ptrs, 4);
  const int64_t plane = c.batch * c.dim;
  auto stage_velocities = nan_buffer<T>(p.steps * 4 * plane);
  auto x1 = nan_buffer<T>(plane), states = nan_buffer<T>(p.steps * plane);
  auto stage_input_grads = nan_buffer<T>(4 * plane), stage_grads = nan_buffer<T>(plane);
  p.stage_velocities = stage_velocities.data();
  p.velocity_step_stride = 4 * plane;
  p.x1 = x1.data();
  p.states = states.data();
  p.saved_states = p.states;
  p.grad_x = static_cast<T*>(ptrs[3]);
  p.stage_input_grads = stage_input_grads.data();
  p.stage_grads = stage_grads.data();
  lp.endpoint_weight = T(reals[3]);
  lp.path_weight = T(reals[4]);
  lp.terms = static_cast<T*>(ptrs[2]);
  const GradBuffers<T> buffers(c, p, kRk4TilesPerTotal);
  if constexpr (sizeof(T) == 4) {
    run(c.tf32 ? jko_block_loss_kernel<float, true> : jko_block_loss_kernel<float, false>, lp, c.grid,
        p.plan.smem_bytes);
  } else {
    run(jko_block_loss_kernel<double, false>, lp, c.grid, p.plan.smem_bytes);
  }
  reduce(buffers, c.grid, p.layout, p.net, ptrs + 36, ptrs + 52);
  return 0;
}

// The kernel of emu_local_overrun_probe.
struct OverrunProbe {
  float* out;
  int index;
};
__global__ void local_overrun_kernel(OverrunProbe p) {
  float local[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  // The address through an integer: UBSan's bounds and object-size checks would see it first, and
  // this probes ASan's redzones.
  const auto* element = reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(local) + 4u * unsigned(p.index));
  __syncthreads();
  if (threadIdx.x == 0) p.out[0] = *element;
}

// The kernels of emu_race_probe, one per case so that a report names its case. Thread 0 writes a
// shared word and thread 1 (the same warp) reads it, or every block's thread 0 adds to one device
// word; each `racy` case has nothing that orders the two accesses on the GPU.
struct RaceProbe {
  float* out;
};
__device__ float* shared_word() { return reinterpret_cast<float*>(dynamic_smem()); }
__device__ void hand_over(RaceProbe p, bool read) {
  if (read && threadIdx.x == 1 && blockIdx.x == 0) p.out[0] = shared_word()[0];
}
__global__ void race_in_first_phase_kernel(RaceProbe p) {  // racy
  if (threadIdx.x == 0) shared_word()[0] = 1.0f;
  hand_over(p, true);
}
__global__ void ordered_by_syncthreads_kernel(RaceProbe p) {
  if (threadIdx.x == 0) shared_word()[0] = 1.0f;
  __syncthreads();
  hand_over(p, true);
}
__global__ void race_between_blocks_kernel(RaceProbe p) {  // racy
  if (threadIdx.x == 0) p.out[0] += 1.0f;
}
__global__ void race_in_later_phase_kernel(RaceProbe p) {  // racy: barriers before and after
  __syncthreads();
  if (threadIdx.x == 0) shared_word()[0] = 1.0f;
  hand_over(p, true);
  __syncthreads();
}
__global__ void race_across_shuffle_kernel(RaceProbe p) {  // racy: a shuffle orders no memory
  if (threadIdx.x == 0) shared_word()[0] = 1.0f;
  const float v = __shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
  hand_over(p, v == 1.0f);
}
__global__ void ordered_by_syncwarp_kernel(RaceProbe p) {
  if (threadIdx.x == 0) shared_word()[0] = 1.0f;
  __syncwarp();
  hand_over(p, true);
}

}  // namespace

namespace {
// An entry point's status: 0, its own refusal (1), or 2 if a launch broke a rule of the hardware
// (emu_fault says which).
template <class Entry>
int checked(Entry&& entry) {
  emu::fault.clear();
  const int rc = entry();
  return rc != 0 ? rc : emu::fault.empty() ? 0 : 2;
}
}  // namespace

extern "C" {

// Shifts each block's shared memory this many bytes past its 256-byte alignment (0 by default): a
// test that the vector-access alignment check works.
void emu_set_smem_offset(int bytes) { g_smem_offset = bytes; }

// What the last launch broke, when an entry point returned 2.
const char* emu_fault() { return emu::fault.c_str(); }

// The sanitizer this library was built with (.ci/emulation_sanitized): 0 none, 1 AddressSanitizer
// (with UBSan), 2 ThreadSanitizer. Lets a sanitized test run refuse a library built without it,
// which would pass while checking nothing.
int emu_sanitizer() {
#if defined(__SANITIZE_ADDRESS__)
  return 1;
#elif defined(__SANITIZE_THREAD__)
  return 2;
#else
  return 0;
#endif
}

// A thread's local array overrun after a barrier: the AddressSanitizer run's check that a
// resumed thread's stack keeps its redzones (cuda_shim.h's header). `index` is the caller's (4:
// one past the end), so the compiler cannot see the overrun.
float emu_local_overrun_probe(int index) {
  DeviceBuffer<float> out(1, 0.0f);
  run(local_overrun_kernel, OverrunProbe{out.data(), index}, /*grid=*/1, /*smem_bytes=*/64);
  return out[0];
}

// The kernels' TF32 rounding of one operand (mma_tf32.cuh tf32_bits): cvt.rna rounds to nearest,
// ties away from zero; a truncation would pass every error bound the tests set on TF32 outputs
// while biasing each product the same way.
float emu_tf32_round(float v) { return std::bit_cast<float>(jkofast::cuda::tf32_bits(v)); }

// Runs race probe `kind` (the kernels above, in their order) through the same launches as the real
// kernels, 2 blocks: the ThreadSanitizer run's check that it reports exactly the unordered
// accesses (test_cuda_emulation.py). Returns the device word.
float emu_race_probe(int kind) {
  static void (*const kernels[])(RaceProbe) = {race_in_first_phase_kernel, ordered_by_syncthreads_kernel,
                                               race_between_blocks_kernel, race_in_later_phase_kernel,
                                               race_across_shuffle_kernel, ordered_by_syncwarp_kernel};
  DeviceBuffer<float> out(1, 0.0f);
  run(kernels[kind], RaceProbe{out.data()}, /*grid=*/2, /*smem_bytes=*/64);
  return out[0];
}

// 0: released threads run in ascending index order, 1: descending, >= 2: shuffled (seed).
void emu_set_schedule(int schedule) { g_schedule = schedule; }

// The plan the kernels would use: (rows, samples, tangents, chunks, smem_bytes) into out.
int emu_plan(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int itemsize, int rows,
             int64_t* out) {
  const tile::TilePlan plan = tile::make_plan(dim, input_dim, hidden, tangent_rows, itemsize, rows);
  out[0] = plan.rows;
  out[1] = plan.samples;
  out[2] = plan.tangents;
  out[3] = plan.chunks;
  out[4] = plan.smem_bytes;
  return 0;
}

// The CUDA glue's fit check (csrc/cuda/cuda_glue.cpp: check_fits).
int emu_within_limits(int64_t dim, int64_t hidden, int64_t weights) {
  return tile::within_limits(dim, hidden, weights) ? 1 : 0;
}

int emu_choose_rows(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int itemsize,
                    int64_t budget) {
  return tile::choose_rows(dim, input_dim, hidden, tangent_rows, itemsize, budget);
}

// The CUDA glue's launch plan (tile::choose_launch, as csrc/cuda/cuda_glue.cpp: plan_launch calls
// it), on a GPU of `multiprocessors` SMs whose occupancy is what shared memory allows: at most
// max_blocks_per_sm blocks, and smem_per_sm bytes of shared memory, per multiprocessor.
// out: rows, grid, found (0/1), samples per tile.
void emu_choose_launch(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int itemsize,
                       int64_t batch, int64_t smem_per_block, int multiprocessors, int64_t smem_per_sm,
                       int max_blocks_per_sm, int forced_rows, int exact_rows, int grid_cap, int64_t* out) {
  auto occupancy = [&](int64_t bytes) {
    const int64_t by_smem = smem_per_sm / bytes;
    return int(by_smem < max_blocks_per_sm ? by_smem : max_blocks_per_sm);
  };
  const tile::LaunchChoice c = tile::choose_launch(dim, input_dim, hidden, tangent_rows, itemsize, batch, smem_per_block,
                                                   multiprocessors, occupancy, forced_rows, exact_rows != 0, grid_cap);
  out[0] = c.plan.rows;
  out[1] = c.grid;
  out[2] = c.found ? 1 : 0;
  out[3] = c.plan.samples;
}

// The shared-memory banks of staging a weight chunk (tile::stage_position): the most distinct
// 4-byte words that one store request puts on one of the 32 banks (1: conflict-free), over every
// store of the chunk; a request is a warp's 32 lanes, or a half-warp for 8-byte values, as the
// hardware serves them. -1 if the positions are not a bijection onto the stage's rows x columns.
int emu_stage_store_ways(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int itemsize,
                         int rows, int transposed) {
  const tile::TilePlan plan = tile::make_plan(dim, input_dim, hidden, tangent_rows, itemsize, rows);
  const int elems = tile::stage_elems(itemsize);
  if (plan.stage_rows * plan.chunk_cols != elems) return -1;
  std::vector<int> hits(size_t(elems), 0);
  const int lanes = itemsize == 8 ? 16 : 32, words = itemsize / 4;
  int worst = 0;
  for (int first = 0; first < elems; first += lanes) {
    std::vector<int64_t> request;
    for (int e = first; e < first + lanes; ++e) {
      int q = -1, p = -1;
      tile::stage_position(e, transposed != 0, plan, itemsize, q, p);
      if (q < 0 || q >= plan.stage_rows || p < 0 || p >= plan.chunk_cols || hits[size_t(q) * plan.chunk_cols + p]++)
        return -1;
      const int64_t word = (int64_t(q) * plan.stage_ld + p) * words;
      for (int w = 0; w < words; ++w) request.push_back(word + w);
    }
    worst = std::max(worst, request_ways(request));
  }
  return worst;
}

// The banks of a TF32 fragment load (float plans): the most distinct words on one bank among the
// 32 lanes of each of the fragment's loads, at the offsets tf32_block_product loads from
// (mma_tf32.cuh: tf32_a_offset, tf32_b_offset): operand 0, A's 4 registers from a stack (ld);
// 1, B's 2 registers from the weight stage (stage_ld), for the first and the second n8 product of
// a 16-column tile (+ 8 columns).
int emu_fragment_load_ways(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int rows,
                           int operand) {
  const tile::TilePlan plan = tile::make_plan(dim, input_dim, hidden, tangent_rows, 4, rows);
  int worst = 0;
  for (int load = 0; load < 4; ++load) {
    std::vector<int64_t> request;
    for (int lane = 0; lane < 32; ++lane) {
      request.push_back(operand == 0 ? tf32_a_offset(lane, load, plan.ld)
                                     : tf32_b_offset(lane, load & 1, plan.stage_ld) + 8 * (load >> 1));
    }
    worst = std::max(worst, request_ways(request));
  }
  return worst;
}

// The banks of the TF32 weight-gradient product's operand loads (block_gemm_tf32.cuh: tf32_weight_grad;
// float plans): the 8-byte pairs at tf32_pair_offset from a stack, the most distinct words on one
// bank among each half-warp (the request of an 8-byte load) of both halves of a k step, over
// every 16-column tile of the stack and k steps starting at even and odd multiples of 8 rows.
int emu_weight_grad_load_ways(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int rows) {
  const tile::TilePlan plan = tile::make_plan(dim, input_dim, hidden, tangent_rows, 4, rows);
  int worst = 0;
  for (int m = 0; m < 16; m += 8) {
    for (int col0 = 0; col0 < plan.width; col0 += 16) {
      for (int half = 0; half < 2; ++half) {
        for (int first = 0; first < 32; first += 16) {
          std::vector<int64_t> request;
          for (int lane = first; lane < first + 16; ++lane) {
            const int64_t word = int64_t(m) * plan.ld + col0 + tf32_pair_offset(lane, half, plan.ld);
            if (word % 2 != 0) return -1;  // not 8-byte aligned
            request.push_back(word);
            request.push_back(word + 1);
          }
          worst = std::max(worst, request_ways(request));
        }
      }
    }
  }
  return worst;
}

// When backward kernels move a block's float part into its double total (mlp_params.h).
int emu_moves_part_after(int64_t t, int64_t tiles, int64_t block, int64_t grid, int every) {
  return moves_part_after(t, tiles, block, grid, every) ? 1 : 0;
}
int emu_needs_totals(int64_t tiles, int64_t grid, int every) { return needs_totals(tiles, grid, every) ? 1 : 0; }
int emu_field_tiles_per_total(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int rows) {
  return field_tiles_per_total(tile::make_plan(dim, input_dim, hidden, tangent_rows, 4, rows));
}

int emu_field(const int64_t* ints, const double* reals, void* const* ptrs) {
  return checked([&] { return ints[0] == 8 ? field<double>(ints, reals, ptrs) : field<float>(ints, reals, ptrs); });
}

int emu_rk4(const int64_t* ints, const double* reals, void* const* ptrs) {
  return checked([&] { return ints[0] == 8 ? rk4<double>(ints, reals, ptrs) : rk4<float>(ints, reals, ptrs); });
}

int emu_jko_loss(const int64_t* ints, const double* reals, void* const* ptrs) {
  return checked([&] { return ints[0] == 8 ? jko_loss<double>(ints, reals, ptrs) : jko_loss<float>(ints, reals, ptrs); });
}

}  // extern "C"
