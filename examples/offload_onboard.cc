// What an inference server does with kvbm, in one process: its KV cache lives on the GPU;
// when GPU memory runs short it offloads blocks to a host tier and on to a disk tier,
// and before the blocks are needed again it onboards them, disk -> GPU in one request
// (the engine stages it through pinned memory). All three tiers share one block shape,
// so a block id is all it takes to move a block between them. Without a GPU, host
// memory stands in for GPU memory and every step is the same.
// Run: build/default/examples/offload_onboard   (exit status 0 when every block came back)
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include <kvbm/cuda.h>
#include <kvbm/layout.h>
#include <kvbm/storage.h>
#include <kvbm/transfer.h>

namespace {

int die(const char* what, const kvbm::Error& e) {
  std::fprintf(stderr, "%s: %s\n", what, e.to_string().c_str());
  return 1;
}

// A host layout's block as bytes (every chunk of it, in (layer, outer) order).
std::vector<unsigned char> read_block(const kvbm::Layout& host, size_t block) {
  const auto& c = host.config();
  std::vector<unsigned char> out;
  for (size_t l = 0; l < c.num_layers; ++l) {
    for (size_t o = 0; o < c.outer_dim; ++o) {
      const auto r = host.memory_region_unchecked(block, l, o);
      const auto* p = reinterpret_cast<const unsigned char*>(r.addr);
      out.insert(out.end(), p, p + r.size);
    }
  }
  return out;
}

void fill_block(kvbm::Layout& host, size_t block, unsigned char seed) {
  const auto& c = host.config();
  for (size_t l = 0; l < c.num_layers; ++l) {
    for (size_t o = 0; o < c.outer_dim; ++o) {
      const auto r = host.memory_region_unchecked(block, l, o);
      auto* p = reinterpret_cast<unsigned char*>(r.addr);
      for (size_t i = 0; i < r.size; ++i) p[i] = static_cast<unsigned char>(seed + i * 13 + l);
    }
  }
}

// Copies blocks and waits; prints the step and the path the engine chose.
kvbm::Status step(kvbm::TransferEngine& engine, const char* what, const kvbm::Layout& src,
                  const std::vector<size_t>& src_ids, const kvbm::Layout& dst,
                  const std::vector<size_t>& dst_ids) {
  auto t = engine.copy(src, src_ids, dst, dst_ids);
  if (!t) return t.error();
  if (auto st = t->wait(); !st) return st;
  std::printf("%-34s %zu blocks, %6.2f MiB, %s path\n", what, src_ids.size(),
              static_cast<double>(t->bytes()) / (1 << 20), kvbm::to_string(t->path()));
  return {};
}

std::vector<size_t> ids(size_t first, size_t count) {
  std::vector<size_t> v(count);
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

int main() {
  using kvbm::Layout;
  using kvbm::LayoutKind;
  // 16 tokens x 8 heads x 128 dims x 2 B = 32 KiB per chunk; K and V; 4 layers.
  kvbm::LayoutConfig config{.num_blocks = 32,
                            .num_layers = 4,
                            .outer_dim = 2,
                            .page_size = 16,
                            .inner_dim = 1024,
                            .dtype_bytes = 2,
                            .alignment = 4096};
  const bool gpu = kvbm::cuda_device_count().value_or(0) > 0;

  // The GPU cache as the model sees it (one region per layer), a smaller host tier and a
  // larger disk tier (each one region, block after block). Each layout owns its memory.
  auto gpu_cache =
      gpu ? Layout::allocate(config, LayoutKind::LayerSeparate, kvbm::DeviceAllocator(0))
          : Layout::allocate(config, LayoutKind::LayerSeparate, kvbm::SystemAllocator());
  if (!gpu_cache) return die("GPU cache", gpu_cache.error());
  auto host_config = config;
  host_config.num_blocks = 16;
  auto host =
      gpu ? Layout::allocate(host_config, LayoutKind::FullyContiguous, kvbm::PinnedAllocator())
          : Layout::allocate(host_config, LayoutKind::FullyContiguous, kvbm::SystemAllocator());
  if (!host) return die("host tier", host.error());
  auto disk_config = config;
  disk_config.num_blocks = 128;
  // A file of the right size in a temp dir (DiskAllocator(dir) for another place).
  auto disk = Layout::allocate(disk_config, LayoutKind::FullyContiguous, kvbm::DiskAllocator());
  if (!disk) return die("disk tier", disk.error());
  auto engine = kvbm::TransferEngine::create();
  if (!engine) return die("engine", engine.error());
  // Optional: the host tier as fixed buffers of the engine's io_uring, so that offloads
  // to disk and reads back skip pinning its pages on every I/O.
  if (auto st = (*engine)->register_host_layout(*host); !st)
    return die("register host", st.error());
  std::printf("GPU cache: %s; host tier: %s\n", gpu ? "GPU 0" : "host memory (no GPU here)",
              gpu ? "pinned" : "plain host memory");

  // Stand-in for prefill: 8 blocks of known content land in GPU blocks 10..17.
  for (size_t b = 0; b < 8; ++b) fill_block(*host, b, static_cast<unsigned char>(b + 1));
  std::vector<std::vector<unsigned char>> want;
  for (size_t b = 0; b < 8; ++b) want.push_back(read_block(*host, b));
  if (auto st = step(**engine, "prefill: host 0..7 -> GPU 10..17", *host, ids(0, 8), *gpu_cache,
                     ids(10, 8));
      !st) {
    return die("prefill", st.error());
  }

  // Memory runs short: offload GPU 10..17 to host 8..15, then on to disk 40..47.
  if (auto st = step(**engine, "offload: GPU -> host", *gpu_cache, ids(10, 8), *host, ids(8, 8));
      !st) {
    return die("offload to host", st.error());
  }
  if (auto st = step(**engine, "offload: host -> disk", *host, ids(8, 8), *disk, ids(40, 8)); !st) {
    return die("offload to disk", st.error());
  }

  // The GPU blocks and the host copies are reused for other work (here: overwritten).
  for (size_t b = 0; b < 16; ++b) fill_block(*host, b, 0xEE);
  if (auto st =
          step(**engine, "reuse: host -> GPU 10..17", *host, ids(0, 8), *gpu_cache, ids(10, 8));
      !st) {
    return die("reuse", st.error());
  }

  // The request comes back: onboard disk 40..47 straight into GPU blocks 20..27 (any free
  // ones will do), then check them by copying them out to the host tier.
  if (auto st =
          step(**engine, "onboard: disk -> GPU 20..27", *disk, ids(40, 8), *gpu_cache, ids(20, 8));
      !st) {
    return die("onboard", st.error());
  }
  if (auto st = step(**engine, "check: GPU 20..27 -> host 0..7", *gpu_cache, ids(20, 8), *host,
                     ids(0, 8));
      !st) {
    return die("check", st.error());
  }
  for (size_t b = 0; b < 8; ++b) {
    if (read_block(*host, b) != want[b]) {
      std::fprintf(stderr, "block %zu did not come back intact\n", b);
      return 1;
    }
  }
  std::printf("OK: 8 blocks went GPU -> host -> disk -> GPU intact\n");
  return 0;
}
