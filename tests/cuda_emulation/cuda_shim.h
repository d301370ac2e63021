// A host stand-in for the CUDA built-ins that csrc/cuda/*.cuh use, so that the kernels themselves
// (not a model of them) run on a machine without a GPU: each thread of a block is a fiber,
// __syncthreads a barrier of the block's 256 fibers, __shfl_xor_sync an exchange through a
// per-warp buffer, and the TF32 tensor-core fragments a whole 16 x 16 tile held by every lane
// (each lane multiplies the full tile; one lane stores it). Blocks run one after another, each
// with its own dynamic shared memory filled with NaN bytes, so a read of smem or of a workspace
// that nothing wrote shows up as NaN in the results.
//
// What it checks: indexing, bounds of the tiles and chunks, barrier placement (a barrier not
// reached by every thread aborts; a missing one changes results between schedules), the
// arithmetic of both product paths (TF32 rounding included), and the WMMA rule on pointers and
// strides (a fragment's memory 32-byte aligned, ldm a multiple of 16 bytes; emulated device
// buffers and shared memory are 256-byte aligned, as cudaMalloc's and at least as smem's base). What it cannot check: the hardware's
// fragment layouts and memory model, timing, coalescing, occupancy, registers; compute-sanitizer
// on the GPU stays the real check of memory and races.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n)

namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

// The threads of a block are fibers (ucontext) run by one OS thread, each until it waits at a
// barrier or ends; a barrier releases its waiters once all its threads have arrived. The order in
// which released threads run is the schedule: ascending, descending or shuffled thread index, so
// that running a case under two schedules exposes a missing barrier (a thread reading what another
// writes in the same phase sees a different value under one of the orders). No runnable thread
// while some still wait means a barrier that not every thread reaches: the run aborts.
class Scheduler;
struct Barrier {
  int size = 0;
  std::vector<int> waiting;
};

struct Block {
  Barrier barrier;    // __syncthreads
  Barrier warps[8];   // __syncwarp, warp-wide exchanges
  alignas(8) unsigned char slots[256][8];  // __shfl_xor_sync
  unsigned char* smem = nullptr;
  Scheduler* scheduler = nullptr;
};

inline Dim3 thread_idx, block_idx, grid_dim;
inline std::string fault;  // the first rule a launch broke (empty: none); see check_wmma_memory
inline Block* block = nullptr;

class Scheduler {
 public:
  Scheduler(Block& blk, int threads, int schedule, std::function<void()> body)
      : block_(blk), body_(std::move(body)), schedule_(schedule), rng_(uint32_t(schedule) * 2654435761u + 1u) {
    fibers_.resize(threads);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      f.stack.reset(new char[kStack]);
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &main_;
      makecontext(&f.context, reinterpret_cast<void (*)()>(&Scheduler::trampoline), 1, t);
    }
    std::vector<int> all(threads);
    for (int t = 0; t < threads; ++t) all[t] = t;
    release(all);
  }

  void run() {
    current_scheduler() = this;
    while (!ready_.empty()) {
      const int t = ready_.front();
      ready_.pop_front();
      current_ = t;
      thread_idx = {unsigned(t), 0, 0};
      swapcontext(&main_, &fibers_[t].context);
    }
    for (const Fiber& f : fibers_) {
      if (!f.done) {
        std::fprintf(stderr, "emulated block deadlocked: a barrier that not every thread reaches\n");
        std::abort();
      }
    }
  }

  void wait(Barrier& b) {
    b.waiting.push_back(current_);
    if (int(b.waiting.size()) == b.size) {
      std::vector<int> released;
      released.swap(b.waiting);
      release(released);
    }
    swapcontext(&fibers_[current_].context, &main_);
    thread_idx = {unsigned(current_), 0, 0};
  }

  static Scheduler*& current_scheduler() {
    static Scheduler* s = nullptr;
    return s;
  }

 private:
  static constexpr size_t kStack = 256 * 1024;
  struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    bool done = false;
  };

  static void trampoline(int t) {
    Scheduler* s = current_scheduler();
    s->body_();
    s->fibers_[t].done = true;  // then uc_link returns to run()
  }

  void release(std::vector<int>& threads) {
    std::sort(threads.begin(), threads.end());
    if (schedule_ == 1) std::reverse(threads.begin(), threads.end());
    if (schedule_ >= 2) std::shuffle(threads.begin(), threads.end(), rng_);
    for (int t : threads) ready_.push_back(t);
  }

  Block& block_;
  std::function<void()> body_;
  int schedule_;
  std::mt19937 rng_;
  ucontext_t main_;
  std::vector<Fiber> fibers_;
  std::deque<int> ready_;
  int current_ = 0;
};

inline Barrier& my_warp_barrier() { return block->warps[thread_idx.x / 32]; }

}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::block->scheduler->wait(emu::block->barrier); }
inline void __syncwarp() { emu::block->scheduler->wait(emu::my_warp_barrier()); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8);
  const unsigned me = emu::thread_idx.x, lane = me % 32;
  std::memcpy(emu::block->slots[me], &value, sizeof(T));
  __syncwarp();
  T out;
  std::memcpy(&out, emu::block->slots[me - lane + (lane ^ unsigned(lane_mask))], sizeof(T));
  __syncwarp();
  return out;
}

using std::fabs;
using std::fma;
using std::max;
using std::min;

namespace jkofast::cuda {
inline unsigned char* dynamic_smem() { return emu::block->smem; }
}  // namespace jkofast::cuda

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// The whole tile, row-major, in every lane (the hardware spreads it over the warp's registers).
template <class Use, int M, int N, int K, class Elem, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties away from zero.
// Built with -DJKOFAST_EMULATE_BF16_OPERANDS (tests/cuda_emulation/float32_at_scale.py --bf16), it
// rounds to bfloat16 instead (cvt.rn.bf16.f32: 7 mantissa bits, ties to even): what a BF16
// tensor-core path with float accumulation would compute. A study only; there is no BF16 kernel.
inline float __float_to_tf32(float v) {
  uint32_t bits = std::bit_cast<uint32_t>(v);
#ifdef JKOFAST_EMULATE_BF16_OPERANDS
  bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
#else
  bits = (bits + 0x1000u) & 0xFFFFE000u;
#endif
  return std::bit_cast<float>(bits);
}

// load_matrix_sync / store_matrix_sync: "mptr must be a 256-bit aligned pointer", "ldm must be a
// multiple of 4 for float" (CUDA C++ Programming Guide, warp matrix functions). The hardware's
// behaviour otherwise is undefined: the emulation records the first such access in emu::fault
// (the launch then fails in the driver) and goes on, as a fiber cannot unwind.
inline void check_wmma_memory(const float* p, unsigned ldm, const char* what) {
  const size_t misaligned = size_t(reinterpret_cast<std::uintptr_t>(p) % 32);
  if ((misaligned != 0 || ldm % 4 != 0) && emu::fault.empty()) {
    char text[160];
    std::snprintf(text, sizeof(text), "%s: pointer %zu bytes past 32-byte alignment, ldm %u (a multiple of 4 needed)",
                  what, misaligned, ldm);
    emu::fault = text;
  }
}

template <class Use, int M, int N, int K, class Elem, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, Elem, Layout>& f, const float* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, Elem, Layout>;
  check_wmma_memory(p, ldm, "wmma::load_matrix_sync (operand)");
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) {
      f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c];
    }
  }
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  if (layout != mem_row_major) std::abort();
  check_wmma_memory(p, ldm, "wmma::load_matrix_sync (accumulator)");
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) f.x[r * N + c] = p[r * ldm + c];
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  if (layout != mem_row_major) std::abort();
  check_wmma_memory(p, ldm, "wmma::store_matrix_sync");
  __syncwarp();  // every lane has read what it needed
  if (emu::thread_idx.x % 32 == 0) {
    for (int r = 0; r < M; ++r) {
      for (int c = 0; c < N; ++c) p[r * ldm + c] = f.x[r * N + c];
    }
  }
  __syncwarp();
}

template <class Frag>
void fill_fragment(Frag& f, float v) {
  for (float& e : f.x) e = v;
}

template <int M, int N, int K, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += a.x[i * K + k] * b.x[k * N + j];  // TF32 products are exact in float
      out[i * N + j] = acc;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace nvcuda::wmma
