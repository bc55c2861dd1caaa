// The offload manager: a thread that copies newly registered G1 blocks to G2, and blocks
// the frequency filter lets through to G3 (from G2, or from G1 with the bypass or without
// a G2). Each batch is one engine request per tier pair. The queue is bounded: a block
// that finds it full is dropped and counted, so callers never wait.
//
// Thread safety: every call from many threads. Lock order: the manager's mutex, then a
// pool's; pools never call back into it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "kvbm/pool/block_manager.h"
#include "pool/frequency_filter.h"
#include "pool/manager_counters.h"
#include "pool/tier.h"
#include "pool/tier_copy.h"

namespace kvbm::detail {

class OffloadManager {
 public:
  // `tiers`, `engine` and `counters` must outlive the manager.
  OffloadManager(const Tiers& tiers, TransferEngine& engine, const OffloadOptions& options,
                 ManagerCounters& counters);
  // Stops the thread after the batch in flight; queued blocks are dropped (not counted).
  ~OffloadManager();

  // A G1 block just registered: one hit, and its offloads.
  void registered(const ImmutableBlock& block);
  // One hit for every matched block; queues disk copies the filter now lets through.
  void matched(const MatchResult& match);
  // Waits until nothing is queued or in flight; Timeout otherwise.
  Status flush(std::chrono::milliseconds timeout);
  size_t queued() const;

 private:
  struct OffloadJob {
    ImmutableBlock block;
    Tier dst;
  };
  // With mu_ held: queues a copy of `block` to `dst` unless dst holds it; false if full.
  void enqueue_locked(const ImmutableBlock& block, Tier dst);
  // With mu_ held: queues a disk copy when `block` is on the disk source tier and passes.
  void to_disk_if_due_locked(const ImmutableBlock& block, uint32_t hits);
  std::optional<Tier> disk_source_tier() const {
    return disk_source_ ? std::optional<Tier>(disk_source_->tier) : std::nullopt;
  }
  void run();
  void process(std::vector<OffloadJob> batch);
  // Allocates destinations for a tier pair's blocks and starts their request.
  void start_pair(Tier src, Tier dst, std::vector<ImmutableBlock> blocks,
                  std::vector<TierCopy>& started);

  const Tiers& tiers_;
  TransferEngine& engine_;
  const OffloadOptions options_;
  ManagerCounters& counters_;
  TierStore* disk_source_ = nullptr;  // the tier G3 copies come from; null without G3

  mutable std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<OffloadJob> queue_;
  FrequencyFilter filter_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: started once everything above is built
};

}  // namespace kvbm::detail
