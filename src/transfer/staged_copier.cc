#include "transfer/staged_copier.h"

#include <algorithm>
#include <span>

#include "transfer/cuda_copier.h"

namespace kvbm::detail {
namespace {
constexpr auto kForever = std::chrono::hours(24 * 365);
}  // namespace

Result<std::unique_ptr<StagedCopier>> StagedCopier::create(size_t staging_bytes,
                                                           unsigned queue_depth) {
  auto batch = UringBatch::create(queue_depth);
  if (!batch) return batch.error();
  return std::unique_ptr<StagedCopier>(new StagedCopier(std::move(*batch), staging_bytes));
}

StagedCopier::StagedCopier(std::unique_ptr<UringBatch> batch, size_t staging_bytes)
    : batch_(std::move(batch)), staging_bytes_(staging_bytes), thread_([this] { loop(); }) {}

StagedCopier::~StagedCopier() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<StagedJob> StagedCopier::submit(StagedRequest request) {
  auto job = std::make_shared<StagedJob>(std::move(request));
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(job);
  }
  cv_.notify_one();
  return job;
}

void StagedCopier::loop() {
  for (;;) {
    std::shared_ptr<StagedJob> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    Status s = run(job->request_);
    job->request_ = {};  // the chunk list is not needed any more
    job->finish(std::move(s));
  }
}

// The staging buffer is allocated on first use and kept: pinned once a request involves a
// Device (it then serves Disk <-> Disk too), page-aligned System memory until then.
Result<char*> StagedCopier::staging(bool pinned) {
  if (!staging_ || (pinned && !staging_->pinned())) {
    auto b = StagingBuffer::allocate(*batch_, staging_bytes_, pinned);
    if (!b) return b.error();
    staging_.reset();  // one staging buffer at a time
    staging_.emplace(std::move(*b));
  }
  return staging_->data();
}

Status StagedCopier::run(const StagedRequest& r) {
  const bool src_disk = !r.src_fds.empty();
  const bool dst_disk = !r.dst_fds.empty();
  auto base = staging(r.cuda != nullptr);
  if (!base) return base.error();
  const uint64_t half = staging_bytes_ / 2;
  char* const halves[2] = {*base, *base + half};
  StagingBatcher batches(r.chunks, half, src_disk, dst_disk);
  std::vector<StagedPiece> pieces[2];  // the batch in each half
  std::vector<FileOp> ops;
  std::vector<Chunk> moves;

  auto reads = [&](int h) {
    for (const StagedPiece& p : pieces[h]) {
      ops.push_back(
          {FileOp::Kind::Read, r.src_fds[p.src_region], p.src, halves[h] + p.stage, p.len});
    }
  };
  auto writes = [&](int h) {
    for (const StagedPiece& p : pieces[h]) {
      ops.push_back(
          {FileOp::Kind::Write, r.dst_fds[p.dst_region], p.dst, halves[h] + p.stage, p.len});
    }
  };
  // Starts the CUDA hop of half h: staging -> device (a Disk source) or device -> staging.
  auto cuda_hop = [&](int h) {
    moves.clear();
    uint64_t bytes = 0;
    for (const StagedPiece& p : pieces[h]) {
      const auto stage = reinterpret_cast<uint64_t>(halves[h] + p.stage);
      moves.push_back(src_disk ? Chunk{stage, p.dst, p.len} : Chunk{p.src, stage, p.len});
      bytes += p.len;
    }
    return r.cuda->submit(moves, bytes);
  };

  if (src_disk && dst_disk) {
    // One io_uring batch per step: the writes of batch k-1 and the reads of batch k.
    bool wrote_all = true;
    for (int h = 0;; h = 1 - h) {
      ops.clear();
      if (!wrote_all) writes(1 - h);
      wrote_all = !batches.next(pieces[h]);
      if (!wrote_all) reads(h);
      if (ops.empty()) return {};
      KVBM_TRY(batch_->run(ops));
    }
  }
  if (src_disk) {
    // Read batch k into half h while the GPU scatters batch k-1 from the other half. A
    // scatter still running when this returns (an error) is waited for by its destructor.
    std::unique_ptr<Transfer::Impl> scatter[2];
    for (int h = 0;; h = 1 - h) {
      if (scatter[h]) {
        KVBM_TRY(scatter[h]->wait(kForever));
        scatter[h].reset();
      }
      if (!batches.next(pieces[h])) break;
      ops.clear();
      reads(h);
      KVBM_TRY(batch_->run(ops));
      auto t = cuda_hop(h);
      if (!t) return t.error();
      scatter[h] = std::move(*t);
    }
    for (auto& s : scatter) {
      if (s) KVBM_TRY(s->wait(kForever));
    }
    return {};
  }
  // Device -> Disk: the GPU gathers batch k+1 into one half while batch k is written from
  // the other.
  std::unique_ptr<Transfer::Impl> gather;
  if (batches.next(pieces[0])) {
    auto t = cuda_hop(0);
    if (!t) return t.error();
    gather = std::move(*t);
  }
  for (int h = 0; gather; h = 1 - h) {
    KVBM_TRY(gather->wait(kForever));
    gather.reset();
    if (batches.next(pieces[1 - h])) {
      auto t = cuda_hop(1 - h);
      if (!t) return t.error();
      gather = std::move(*t);
    }
    ops.clear();
    writes(h);
    KVBM_TRY(batch_->run(ops));
  }
  return {};
}

}  // namespace kvbm::detail
