// A host stand-in for the CUDA built-ins that csrc/cuda/*.cuh use, so that the kernels themselves
// (not a model of them) run on a machine without a GPU: each thread of a block is a fiber,
// __syncthreads a barrier of the block's 256 fibers, __shfl_xor_sync an exchange through a
// per-warp buffer, and mma.sync's TF32 tensor-core product an exchange of the warp's registers,
// each lane computing its own results from them in the PTX ISA's fragment layout (so a value put
// in the wrong register gives a wrong product, as on the GPU). Blocks run one after another, each
// with its own dynamic shared memory filled with NaN bytes, so a read of smem or of a workspace
// that nothing wrote shows up as NaN in the results.
//
// What it checks: indexing, bounds of the tiles and chunks, barrier placement (a barrier not
// reached by every thread aborts; a missing one changes results between schedules), the
// arithmetic of both product paths (TF32 rounding included), the alignment of vector accesses
// (emulated device buffers and shared memory are 256-byte aligned, as cudaMalloc's and at least
// as smem's base). What it cannot check: that the PTX ISA's fragment layout, written out here,
// is the hardware's; the memory model, timing, coalescing, occupancy, registers;
// compute-sanitizer on the GPU stays the real check of memory and races.
//
// Built with -fsanitize=thread (.ci/emulation_sanitized), each emulated thread is a ThreadSanitizer
// fiber and the only orders between them are the ones CUDA documents for memory: __syncthreads
// and __syncwarp (every participating thread's accesses before it happen before their accesses
// after it), a launch's end (before the next launch). Warp exchanges (__shfl_xor_sync, mma.sync)
// move registers and order no memory, so they wait for the warp without ordering anything. So
// two threads touching one address, one of them writing, with no barrier between them is
// reported: in shared memory what racecheck calls a hazard; in device memory also between
// threads of different blocks, which racecheck does not look at. The emulation's own
// bookkeeping (which thread runs, the barriers' lists, the launch's indices, the registers a
// warp exchange passes) is shared by all fibers by construction and is read and written
// unchecked (tsan::Unchecked).
//
// Built with -fsanitize=address, the fibers' contexts carry no stack size once made: ASan's
// swapcontext interceptor would otherwise clear the shadow of the whole stack of the context it
// resumes (the redzones of a thread's live frames too), and a kernel's overflow of a local
// array after its first barrier would go unreported.
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

#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

namespace emu::tsan {
#if defined(__SANITIZE_THREAD__)
inline void* current_fiber() { return __tsan_get_current_fiber(); }
inline void* create_fiber() { return __tsan_create_fiber(0); }
inline void destroy_fiber(void* fiber) { __tsan_destroy_fiber(fiber); }
// Flag 1 (__tsan_switch_to_fiber_no_sync): a switch orders nothing. Every switch goes through the
// scheduler's own context, so a switch that synchronized would order every thread after every
// other and hide every race.
inline void switch_to(void* fiber) { __tsan_switch_to_fiber(fiber, 1); }
inline void happens_before(void* sync) { __tsan_release(sync); }  // what this fiber did so far...
inline void happens_after(void* sync) { __tsan_acquire(sync); }   // ...precedes what this one does next
struct Unchecked {  // the emulation's bookkeeping, in scope: not the kernel's accesses
  Unchecked() { __tsan_ignore_thread_begin(); }
  ~Unchecked() { __tsan_ignore_thread_end(); }
  Unchecked(const Unchecked&) = delete;
  Unchecked& operator=(const Unchecked&) = delete;
};
#else
inline void* current_fiber() { return nullptr; }
inline void* create_fiber() { return nullptr; }
inline void destroy_fiber(void*) {}
inline void switch_to(void*) {}
inline void happens_before(void*) {}
inline void happens_after(void*) {}
struct Unchecked {};
#endif
}  // namespace emu::tsan

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
  // ThreadSanitizer's synchronization objects, one per phase parity: a thread released by this
  // phase's barrier may still be to resume (and acquire) when a faster one already arrives at the
  // next; one object would hand it that thread's next-phase accesses as ordered.
  int phase = 0;
  char sync[2] = {};
};

struct Block {
  Barrier barrier;    // __syncthreads
  Barrier warps[8];   // __syncwarp, warp-wide exchanges
  alignas(8) unsigned char slots[256][8];  // __shfl_xor_sync
  uint32_t mma_registers[256][6];          // mma_m16n8k8_tf32: each lane's a0..a3, b0, b1
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  Scheduler* scheduler = nullptr;
};

inline Dim3 thread_idx, block_idx, grid_dim;
inline std::string fault;  // the first rule a launch broke (empty: none); see record_fault
inline Block* block = nullptr;
// Launch-wide order for ThreadSanitizer: the host's work before a block starts (its buffers filled
// with NaN, its parameters) happens before the block's threads run; every thread of a launch
// happens before what the host does after it (end_launch: the next launch, reading the results,
// freeing). Blocks of one launch are not ordered with each other, as on the GPU.
inline char launch_start_sync, launch_end_sync;

// The bookkeeping's shared state, read by the kernels' threads through these (see tsan::Unchecked).
template <typename T>
inline T bookkeeping(const T& value) {
  tsan::Unchecked unchecked;
  return value;
}
inline Block& current_block() { return *bookkeeping(block); }

inline void record_fault(const char* text) {
  tsan::Unchecked unchecked;
  if (fault.empty()) fault = text;
}

// The host's side of a launch's end: after every block has run, before reading or freeing anything
// the blocks touched.
inline void end_launch() { tsan::happens_after(&launch_end_sync); }

class Scheduler {
 public:
  Scheduler(Block& blk, int threads, int schedule, std::function<void()> body)
      : block_(blk), body_(std::move(body)), schedule_(schedule), rng_(uint32_t(schedule) * 2654435761u + 1u) {
    main_fiber_ = tsan::current_fiber();
    fibers_.resize(threads);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      f.sanitizer_fiber = tsan::create_fiber();
      f.stack.reset(new char[kStack]);
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &main_;
      makecontext(&f.context, reinterpret_cast<void (*)()>(&Scheduler::trampoline), 1, t);
      f.context.uc_stack.ss_size = 0;  // made; only ASan's interceptor reads it now (header)
    }
    std::vector<int> all(threads);
    for (int t = 0; t < threads; ++t) all[t] = t;
    release(all);
  }

  ~Scheduler() {
    for (Fiber& f : fibers_) tsan::destroy_fiber(f.sanitizer_fiber);
  }

  void run() {
    tsan::happens_before(&launch_start_sync);
    tsan::Unchecked unchecked;
    current_scheduler() = this;
    while (!ready_.empty()) {
      const int t = ready_.front();
      ready_.pop_front();
      current_ = t;
      thread_idx = {unsigned(t), 0, 0};
      tsan::switch_to(fibers_[t].sanitizer_fiber);
      swapcontext(&main_, &fibers_[t].context);
    }
    for (const Fiber& f : fibers_) {
      if (!f.done) {
        std::fprintf(stderr, "emulated block deadlocked: a barrier that not every thread reaches\n");
        std::abort();
      }
    }
  }

  // A barrier that orders memory (__syncthreads, __syncwarp). ordered=false: the threads only meet,
  // as for a warp's register exchange.
  void wait(Barrier& b, bool ordered = true) {
    if (!ordered) {
      tsan::Unchecked unchecked;
      park(b);
      return;
    }
    void* sync = nullptr;
    {
      tsan::Unchecked unchecked;
      sync = &b.sync[b.phase % 2];
    }
    tsan::happens_before(sync);
    {
      tsan::Unchecked unchecked;
      park(b);
    }
    tsan::happens_after(sync);
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
    void* sanitizer_fiber = nullptr;  // ThreadSanitizer's (nullptr without it)
  };

  static void trampoline(int t) {
    Scheduler* s = bookkeeping(current_scheduler());
    tsan::happens_after(&launch_start_sync);
    s->body_();
    tsan::happens_before(&launch_end_sync);
    {
      tsan::Unchecked unchecked;
      s->fibers_[t].done = true;
    }
    // Back to run() by hand, not by returning through uc_link: under ThreadSanitizer this
    // function's exit would otherwise be recorded on the scheduler's fiber, unbalancing its stack.
    ucontext_t* main = bookkeeping(&s->main_);
    tsan::switch_to(bookkeeping(s->main_fiber_));
    setcontext(main);
  }

  // Arrive at b and run something else until b releases this thread (bookkeeping: call unchecked).
  void park(Barrier& b) {
    b.waiting.push_back(current_);
    if (int(b.waiting.size()) == b.size) {
      std::vector<int> released;
      released.swap(b.waiting);
      ++b.phase;
      release(released);
    }
    tsan::switch_to(main_fiber_);
    swapcontext(&fibers_[current_].context, &main_);
    thread_idx = {unsigned(current_), 0, 0};
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
  ucontext_t main_{};  // (its stack size stays 0: see the header on ASan)
  void* main_fiber_ = nullptr;
  std::vector<Fiber> fibers_;
  std::deque<int> ready_;
  int current_ = 0;
};

inline Barrier& my_warp_barrier() { return current_block().warps[bookkeeping(thread_idx).x / 32]; }

}  // namespace emu

#define threadIdx (emu::bookkeeping(emu::thread_idx))
#define blockIdx (emu::bookkeeping(emu::block_idx))
#define gridDim (emu::bookkeeping(emu::grid_dim))

inline void __syncthreads() {
  emu::Block& b = emu::current_block();
  emu::bookkeeping(b.scheduler)->wait(b.barrier);
}
inline void __syncwarp() { emu::bookkeeping(emu::current_block().scheduler)->wait(emu::my_warp_barrier()); }

namespace emu {
// The warp's threads meet for a register exchange; memory is not ordered (see the header).
inline void warp_exchange() { bookkeeping(current_block().scheduler)->wait(my_warp_barrier(), /*ordered=*/false); }
}  // namespace emu

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8);
  const unsigned me = threadIdx.x, lane = me % 32;
  emu::Block& block = emu::current_block();
  T out;
  {
    emu::tsan::Unchecked unchecked;  // registers, not memory
    std::memcpy(block.slots[me], &value, sizeof(T));
  }
  emu::warp_exchange();
  {
    emu::tsan::Unchecked unchecked;
    std::memcpy(&out, block.slots[me - lane + (lane ^ unsigned(lane_mask))], sizeof(T));
  }
  emu::warp_exchange();
  return out;
}

using std::fabs;
using std::fma;
using std::max;
using std::min;

struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};

namespace emu {
// A vector access at an address its size does not divide: the hardware faults ("misaligned
// address"); the emulation records the first one in emu::fault (the launch then fails in the
// driver) and goes on, as a fiber cannot unwind.
inline void check_vector_alignment(const void* p, size_t bytes, const char* what) {
  const size_t misaligned = size_t(reinterpret_cast<std::uintptr_t>(p) % bytes);
  if (misaligned != 0) {
    char text[160];
    std::snprintf(text, sizeof(text), "%s: pointer %zu bytes past %zu-byte alignment", what, misaligned, bytes);
    record_fault(text);
  }
}
}  // namespace emu

namespace nvcuda::wmma {

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

}  // namespace nvcuda::wmma

namespace jkofast::cuda {
inline unsigned char* dynamic_smem() { return emu::current_block().smem; }

// cvta.to.shared: a generic address as an offset in the shared window (here: from the block's
// shared memory). For an address outside it the hardware's result is undefined: a fault here.
inline size_t __cvta_generic_to_shared(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  const emu::Block& block = emu::current_block();
  if (c < block.smem || c >= block.smem + block.smem_bytes) {
    emu::record_fault("__cvta_generic_to_shared: address outside the block's shared memory");
  }
  return size_t(c - block.smem);
}

inline float2 load_pair(const float* p) {
  emu::check_vector_alignment(p, 8, "load_pair");
  return {p[0], p[1]};
}
inline void store_pair(float* p, float2 v) {
  emu::check_vector_alignment(p, 8, "store_pair");
  p[0] = v.x;
  p[1] = v.y;
}
inline float4 load_quad(const float* p) {
  emu::check_vector_alignment(p, 16, "load_quad");
  return {p[0], p[1], p[2], p[3]};
}
inline void store_quad(float* p, float4 v) {
  emu::check_vector_alignment(p, 16, "store_quad");
  p[0] = v.x;
  p[1] = v.y;
  p[2] = v.z;
  p[3] = v.w;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with d as C and D, a warp-wide instruction:
// every lane publishes its registers, then computes its own 4 outputs from the warp's registers
// read in the PTX ISA's fragment layout (mma_tf32.cuh), so a caller that puts a value in the wrong
// register gets a wrong product, as on the GPU. The tensor cores read an operand's top 19 bits
// (sign, exponent, 10 mantissa bits) and drop the rest, truncating an operand not rounded to
// TF32 first: an error too small for the products' tolerances to see, so a caller that forgot
// to round (cvt.rna) is a fault here. Products of TF32 values are exact in float.
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const unsigned me = threadIdx.x, lane = me % 32, first = me - lane;
  uint32_t(&regs)[256][6] = emu::current_block().mma_registers;
  {
    emu::tsan::Unchecked unchecked;  // the warp's registers, not memory: the exchange orders nothing
    for (int i = 0; i < 4; ++i) regs[me][i] = a[i];
    regs[me][4] = b[0];
    regs[me][5] = b[1];
  }
  for (int i = 0; i < 6; ++i) {
    if ((emu::bookkeeping(regs[me][i]) & 0x1FFFu) != 0) {
      emu::record_fault("mma_m16n8k8_tf32: an operand not rounded to TF32");
    }
  }
  emu::warp_exchange();
  auto value = [](uint32_t bits) { return std::bit_cast<float>(bits & 0xFFFFE000u); };
  const int g = int(lane / 4), t = int(lane % 4);
  float out[4];
  {
    emu::tsan::Unchecked unchecked;
    for (int q = 0; q < 4; ++q) {
      const int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
      float acc = d[q];
      for (int k = 0; k < 8; ++k) {
        const float av = value(regs[first + 4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]);  // A(row, k)
        const float bv = value(regs[first + 4 * col + k % 4][4 + k / 4]);                  // B(k, col)
        acc += av * bv;
      }
      out[q] = acc;
    }
  }
  emu::warp_exchange();  // every lane has read the registers before any publishes its next ones
  for (int q = 0; q < 4; ++q) d[q] = out[q];
}
}  // namespace jkofast::cuda
