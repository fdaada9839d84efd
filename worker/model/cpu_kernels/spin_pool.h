// The threads the block kernels split their work over, instead of OpenMP's.
//
// Why: libgomp keeps one team of threads per thread that starts a parallel region, and once its
// threads outnumber the CPUs it stops spinning between regions (a futex sleep and wake per region).
// A model worker loads on its main thread and decodes on the scheduler's, so every matmul of a
// decode step paid a wake-up: 72 small 4-bit matmuls took 7.1-10.5 ms from a second thread against
// 3.4-3.7 ms from the first (2 threads, this machine), as slow as one thread. These workers are
// the process's own, spin ~0.2 ms after each job (the gap between one layer's matmuls), yielding
// to any other runnable thread, and then sleep, and hand out chunks from a shared counter, so a core taken by another process slows a
// matmul by its share only. One job at a time; a caller that finds the pool busy runs serially.
#pragma once

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dukat {

class SpinPool {
 public:
  using Job = std::function<void(int64_t, int64_t)>;

  // The pool of `threads` (the caller included), made once per size and never freed: its detached
  // workers must outlive every static destructor that might still call a kernel.
  static SpinPool& with(int threads) {
    static std::mutex made_lock;
    static SpinPool* pool = nullptr;
    std::lock_guard<std::mutex> guard(made_lock);
    if (pool == nullptr || pool->threads_ != threads) pool = new SpinPool(threads);  // old one idles
    return *pool;
  }

  // f(begin, end) over [0, n) in chunks of at least `grain`, on every thread of the pool.
  void run(int64_t n, int64_t grain, const Job& f) {
    std::unique_lock<std::mutex> busy(dispatch_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ < 2 || n <= grain) {
      f(0, n);
      return;
    }
    const int64_t chunk = std::max(grain, (n + 4 * threads_ - 1) / (4 * threads_));
    job_ = &f;
    n_ = n;
    chunk_ = chunk;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleeping_.load(std::memory_order_acquire) > 0) {
      std::lock_guard<std::mutex> guard(sleep_lock_);
      wake_.notify_all();
    }
    work();
    for (uint32_t spins = 1; pending_.load(std::memory_order_acquire) > 0; ++spins) {
      _mm_pause();
      if ((spins & 63) == 0) std::this_thread::yield();
    }
  }

 private:
  explicit SpinPool(int threads) : threads_(threads) {
    for (int i = 1; i < threads; ++i) std::thread([this] { loop(); }).detach();
  }

  void work() {
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
      if (begin >= n_) return;
      (*job_)(begin, std::min(n_, begin + chunk_));
    }
  }

  void loop() {
    uint64_t seen = 0;  // the generation at construction: a job posted before this runs is still new
    for (;;) {
      auto spun_since = std::chrono::steady_clock::now();
      uint32_t spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        // Pause, and now and then yield: a thread of torch's own (OpenMP) waiting for this core
        // gets it at once instead of at the end of a time slice.
        _mm_pause();
        if ((++spins & 63) == 0) std::this_thread::yield();
        if ((spins & 255) == 0 && std::chrono::steady_clock::now() - spun_since > kSpin) {
          std::unique_lock<std::mutex> lock(sleep_lock_);
          sleeping_.fetch_add(1, std::memory_order_acq_rel);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          sleeping_.fetch_sub(1, std::memory_order_acq_rel);
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      work();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static constexpr std::chrono::microseconds kSpin{200};
  const int threads_;
  std::mutex dispatch_, sleep_lock_;
  std::condition_variable wake_;
  // Each on its own cache line: workers spin on generation_ while chunks are taken from next_.
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int64_t> next_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<int> sleeping_{0};
  const Job* job_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
};

}  // namespace dukat
