#include "pool/offload_manager.h"

#include <map>
#include <unordered_set>
#include <utility>

#include "kvbm/log.h"

namespace kvbm::detail {

OffloadManager::OffloadManager(const Tiers& tiers, TransferEngine& engine,
                               const OffloadOptions& options, ManagerCounters& counters)
    : tiers_(tiers),
      engine_(engine),
      options_(options),
      counters_(counters),
      filter_(options.disk_min_hits, options.hit_decay_period, options.filter_capacity) {
  if (tier_of(tiers, Tier::G3) != nullptr) {
    TierStore* g2 = tier_of(tiers, Tier::G2);
    disk_source_ = (g2 == nullptr || options.g1_to_g3_bypass) ? tier_of(tiers, Tier::G1) : g2;
  }
  thread_ = std::thread([this] { run(); });
}

OffloadManager::~OffloadManager() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

void OffloadManager::enqueue_locked(const ImmutableBlock& block, Tier dst) {
  if (tier_of(tiers_, dst)->pool->contains(block.sequence_hash())) return;
  if (queue_.size() >= options_.queue_capacity) {
    counters_.dropped(1);
    return;
  }
  queue_.push_back(OffloadJob{block, dst});
  work_cv_.notify_one();
}

void OffloadManager::to_disk_if_due_locked(const ImmutableBlock& block, uint32_t hits) {
  if (disk_source_ == nullptr || hits < filter_.min_hits()) return;
  if (block.tier() == disk_source_->tier) {
    enqueue_locked(block, Tier::G3);
    return;
  }
  // Hit on another tier (G1, with G2 as the disk source): the copy on the source tier, if
  // it has one yet (else the G1 -> G2 offload queues it when done).
  if (block.tier() == Tier::G3 ||
      tier_of(tiers_, Tier::G3)->pool->contains(block.sequence_hash())) {
    return;
  }
  ImmutableBlock on_source = disk_source_->pool->find(block.sequence_hash());
  if (!on_source.empty()) enqueue_locked(on_source, Tier::G3);
}

void OffloadManager::registered(const ImmutableBlock& block) {
  if (!options_.enabled) return;
  std::lock_guard lock(mu_);
  const uint32_t hits = filter_.hit(block.sequence_hash());
  if (tier_of(tiers_, Tier::G2) != nullptr) enqueue_locked(block, Tier::G2);
  // Only a block on the disk source tier (G1 with the bypass or without G2) goes now.
  if (block.tier() == disk_source_tier()) to_disk_if_due_locked(block, hits);
}

void OffloadManager::matched(const MatchResult& match) {
  if (!options_.enabled || match.blocks() == 0) return;
  const auto now = FrequencyFilter::Clock::now();
  std::lock_guard lock(mu_);
  for (const auto* part : {&match.g1, &match.g2, &match.g3}) {
    for (const ImmutableBlock& b : *part) {
      to_disk_if_due_locked(b, filter_.hit(b.sequence_hash(), now));
    }
  }
}

Status OffloadManager::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!idle_cv_.wait_for(lock, timeout, [&] { return queue_.empty() && !busy_; })) {
    return err(ErrorCode::Timeout, "offloads not done after ", timeout.count(),
               " ms: ", queue_.size(), " blocks queued");
  }
  return {};
}

size_t OffloadManager::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void OffloadManager::run() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) break;
    std::vector<OffloadJob> batch;
    while (!queue_.empty() && batch.size() < options_.max_batch) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    busy_ = true;
    lock.unlock();
    process(std::move(batch));
    lock.lock();
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
  queue_.clear();
  idle_cv_.notify_all();
}

void OffloadManager::start_pair(Tier src, Tier dst, std::vector<ImmutableBlock> blocks,
                                std::vector<TierCopy>& started) {
  TierStore& to = *tier_of(tiers_, dst);
  auto space = to.pool->allocate(blocks.size());
  if (!space) {
    // Take what there is room for; the rest is dropped.
    const PoolCounters c = to.pool->counters();
    const size_t room = std::min(blocks.size(), c.free_blocks + c.inactive_blocks);
    counters_.dropped(blocks.size() - room);
    blocks.resize(room);
    if (room == 0) return;
    space = to.pool->allocate(room);
    if (!space) {
      counters_.dropped(room);
      return;
    }
  }
  const size_t n = blocks.size();
  auto copy = TierCopy::start(engine_, *tier_of(tiers_, src), blocks, to, std::move(*space));
  if (!copy) {
    log(LogLevel::Warn, "offload " + std::string(to_string(src)) + " -> " + to_string(dst) +
                            " of " + std::to_string(n) + " blocks: " + copy.error().to_string());
    counters_.moved(src, dst, 0, 0, n);
    return;
  }
  started.push_back(std::move(*copy));
}

void OffloadManager::process(std::vector<OffloadJob> batch) {
  // One request per tier pair; a hash once per pair, and only if not there already.
  std::map<std::pair<Tier, Tier>, std::vector<ImmutableBlock>> pairs;
  std::map<std::pair<Tier, Tier>, std::unordered_set<SequenceHash>> seen;
  for (OffloadJob& job : batch) {
    const auto key = std::make_pair(job.block.tier(), job.dst);
    if (!seen[key].insert(job.block.sequence_hash()).second) continue;
    if (tier_of(tiers_, job.dst)->pool->contains(job.block.sequence_hash())) continue;
    pairs[key].push_back(std::move(job.block));
  }
  batch.clear();
  std::vector<TierCopy> started;
  for (auto& [key, blocks] : pairs) start_pair(key.first, key.second, std::move(blocks), started);
  for (TierCopy& copy : started) {
    const Tier src = copy.source_tier(), dst = copy.destination_tier();
    const size_t n = copy.sources().size();
    auto done = copy.finish();
    if (!done) {
      log(LogLevel::Warn, "offload " + std::string(to_string(src)) + " -> " + to_string(dst) +
                              " of " + std::to_string(n) + " blocks: " + done.error().to_string());
      counters_.moved(src, dst, 0, 0, n);
      continue;
    }
    counters_.moved(src, dst, n, copy.bytes(), 0);
    if (disk_source_ == nullptr || disk_source_->tier != dst) continue;
    std::lock_guard lock(mu_);
    for (const ImmutableBlock& b : *done) {
      to_disk_if_due_locked(b, filter_.count(b.sequence_hash()));
    }
  }
}

}  // namespace kvbm::detail
