// The transfer engine and its transfers.
#include <algorithm>
#include <atomic>
#include <optional>

#include "common.h"

namespace kvbm::python {

namespace {

struct EngineBox {
  std::unique_ptr<TransferEngine> engine;
  ~EngineBox() {
    MaybeReleaseGil g;
    engine.reset();
  }
};
using EnginePtr = std::shared_ptr<EngineBox>;

// A Transfer and what it needs alive; the Transfer goes first (it waits for, or cancels,
// the copy), then the layouts and the engine.
struct TransferBox {
  EnginePtr engine;
  LayoutPtr src, dst;
  AgentPtr agent;
  std::mutex mu;  // a Transfer is used from one thread at a time
  std::atomic<bool> finished{false};
  std::optional<Status> outcome;
  std::optional<Transfer> transfer;
  ~TransferBox() {
    MaybeReleaseGil g;
    transfer.reset();
  }
};
using TransferPtr = std::shared_ptr<TransferBox>;

AgentPtr agent_arg(py::handle agent) {
  if (agent.is_none()) return nullptr;
  try {
    return agent.cast<AgentPtr>();
  } catch (const py::cast_error&) {
    throw py::type_error("agent must be a kvbm.Agent");
  }
}

TransferPtr start_copy(const EnginePtr& e, const LayoutPtr& src, py::handle src_ids,
                       const LayoutPtr& dst, py::handle dst_ids, py::handle agent,
                       py::handle notification) {
  auto t = std::make_shared<TransferBox>();
  t->engine = e;
  t->src = src;
  t->dst = dst;
  t->agent = agent_arg(agent);
  std::vector<size_t> s = to_ids(src_ids, "src_ids");
  std::vector<size_t> d = dst_ids.is_none() ? s : to_ids(dst_ids, "dst_ids");
  CopyOptions o;
  if (t->agent) o.agent = t->agent->agent.get();
  if (!notification.is_none()) o.notification = bytes_arg(notification, "notification");
  auto r = [&] {
    py::gil_scoped_release g;
    return e->engine->copy(*src->layout, s, *dst->layout, d, o);
  }();
  t->transfer.emplace(unwrap(std::move(r)));
  return t;
}

void wait_transfer(TransferBox& t, py::handle timeout) {
  auto ms = timeout_arg(timeout);
  Status st;
  {
    py::gil_scoped_release g;
    std::lock_guard l(t.mu);
    if (t.outcome) {
      st = *t.outcome;
    } else {
      st = t.transfer->wait(ms);
      if (st.ok() || t.transfer->ready()) {
        t.outcome = st;
        t.finished = true;
      }
    }
  }
  check(st);
}

bool transfer_ready(TransferBox& t) {
  if (t.finished) return true;
  std::unique_lock l(t.mu, std::try_to_lock);
  if (!l.owns_lock()) return false;  // another thread is waiting for it
  return t.transfer->ready();
}

// Runs copy + wait `iterations` times in C++ (the engine's own figure, for kvbm.bench).
double bench_copy(const EnginePtr& e, const LayoutPtr& src, py::handle src_ids,
                  const LayoutPtr& dst, py::handle dst_ids, int64_t iterations) {
  std::vector<size_t> s = to_ids(src_ids, "src_ids");
  std::vector<size_t> d = dst_ids.is_none() ? s : to_ids(dst_ids, "dst_ids");
  size_t n = index_arg(iterations, "iterations");
  py::gil_scoped_release g;
  auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    auto t = e->engine->copy(*src->layout, s, *dst->layout, d);
    if (!t) raise(t.error());
    if (auto st = t->wait(); !st) raise(st.error());
  }
  std::chrono::duration<double> dt = std::chrono::steady_clock::now() - start;
  return dt.count();
}

TransferEngineOptions engine_options(int64_t host_threads, int64_t uring_queue_depth,
                                     int64_t staging_bytes, CudaHostEngine cuda_host_engine) {
  TransferEngineOptions o;
  o.host_threads = index_arg(host_threads, "host_threads");
  o.uring_queue_depth = static_cast<unsigned>(
      std::min<size_t>(index_arg(uring_queue_depth, "uring_queue_depth"), 1u << 20));
  o.staging_bytes = index_arg(staging_bytes, "staging_bytes");
  o.cuda_host_engine = cuda_host_engine;
  return o;
}

// The options a BlockManagerConfig carries for its engine (the engine's constructor takes
// the same as keywords).
void bind_options(py::module_& m) {
  py::enum_<CudaHostEngine>(m, "CudaHostEngine",
                            "Pinned host memory <-> GPU: KERNEL (the copy kernel reads or "
                            "writes mapped pinned memory), BATCH (copy engines), SPLIT (both "
                            "at once on disjoint blocks), GATHER (host -> GPU: CPU threads "
                            "gather into pinned staging, one DMA, a scatter kernel), or AUTO "
                            "(measured per GPU).")
      .value("AUTO", CudaHostEngine::Auto)
      .value("KERNEL", CudaHostEngine::Kernel)
      .value("BATCH", CudaHostEngine::Batch)
      .value("SPLIT", CudaHostEngine::Split)
      .value("GATHER", CudaHostEngine::Gather);
  const TransferEngineOptions d;
  using O = TransferEngineOptions;
  py::class_<O>(m, "TransferEngineOptions",
                "A TransferEngine's options (checked when an engine is made from them).")
      .def(py::init(&engine_options), py::kw_only(), py::arg("host_threads") = d.host_threads,
           py::arg("uring_queue_depth") = d.uring_queue_depth,
           py::arg("staging_bytes") = d.staging_bytes,
           py::arg("cuda_host_engine") = d.cuda_host_engine)
      .def_readwrite("host_threads", &O::host_threads)
      .def_readwrite("uring_queue_depth", &O::uring_queue_depth)
      .def_readwrite("staging_bytes", &O::staging_bytes)
      .def_readwrite("cuda_host_engine", &O::cuda_host_engine);
}

void bind_engine(py::module_& m) {
  py::class_<TransferBox, TransferPtr>(
      m, "Transfer",
      "An asynchronous block copy. wait() blocks (without the GIL) and raises the copy's "
      "error; `await transfer` does the same in asyncio. Dropping a running transfer waits "
      "for it (local) or cancels it (remote).")
      .def("wait", &wait_transfer, py::arg("timeout") = py::none(),
           "Waits until the copy finished (seconds; None: no limit) and raises its error; "
           "kvbm.TimeoutError if it is still running after `timeout`.")
      .def("ready", &transfer_ready, "True once the copy finished (successfully or not).")
      .def_property_readonly("path",
                             [](TransferBox& t) {
                               py::gil_scoped_release g;
                               std::lock_guard l(t.mu);
                               return t.transfer->path();
                             })
      .def_property_readonly("bytes",
                             [](TransferBox& t) {
                               py::gil_scoped_release g;
                               std::lock_guard l(t.mu);
                               return t.transfer->bytes();
                             })
      .def_property_readonly("chunks", [](TransferBox& t) {
        py::gil_scoped_release g;
        std::lock_guard l(t.mu);
        return t.transfer->chunks();
      });

  py::class_<EngineBox, EnginePtr>(
      m, "TransferEngine",
      "Copies lists of blocks between two layouts of the same block shape on any two "
      "tiers (host threads, one CUDA kernel, io_uring, staged, or a peer's layout through "
      "an agent). Thread-safe.")
      .def(py::init([](int64_t host_threads, int64_t uring_queue_depth, int64_t staging_bytes,
                       CudaHostEngine cuda_host_engine) {
             auto o =
                 engine_options(host_threads, uring_queue_depth, staging_bytes, cuda_host_engine);
             auto box = std::make_shared<EngineBox>();
             auto e = [&] {
               py::gil_scoped_release g;
               return TransferEngine::create(o);
             }();
             box->engine = unwrap(std::move(e));
             return box;
           }),
           py::kw_only(), py::arg("host_threads") = 0, py::arg("uring_queue_depth") = 64,
           py::arg("staging_bytes") = 64 << 20, py::arg("cuda_host_engine") = CudaHostEngine::Auto)
      .def("copy", &start_copy, py::arg("src"), py::arg("src_ids"), py::arg("dst"),
           py::arg("dst_ids") = py::none(), py::kw_only(), py::arg("agent") = py::none(),
           py::arg("notification") = py::none(),
           "Starts copying blocks src_ids[i] of src into dst_ids[i] of dst (default: the "
           "same ids). A peer's layout needs agent= (the one the local layout is registered "
           "with); notification= reaches the peer once the data is there.")
      .def(
          "path_for",
          [](const EngineBox& e, const LayoutBox& s, const LayoutBox& d) {
            return unwrap(e.engine->path_for(*s.layout, *d.layout));
          },
          py::arg("src"), py::arg("dst"))
      .def(
          "register_host_layout",
          [](EngineBox& e, LayoutBox& l) {
            py::gil_scoped_release g;
            std::lock_guard lock(l.mu);
            check(e.engine->register_host_layout(*l.layout));
          },
          py::arg("layout"),
          "Registers a host layout's memory as fixed buffers of the File path (optional).")
      .def(
          "cuda_host_engine",
          [](EngineBox& e, int ordinal, bool to_device, int64_t chunk_bytes) {
            auto bytes = index_arg(chunk_bytes, "chunk_bytes");
            py::gil_scoped_release g;
            return unwrap(e.engine->cuda_host_engine(ordinal, to_device, bytes));
          },
          py::arg("ordinal"), py::arg("to_device"), py::arg("chunk_bytes"),
          "The engine (KERNEL or BATCH) that copies chunks of chunk_bytes between pinned "
          "memory and GPU `ordinal`: the forced one, or with AUTO the measured one "
          "(measuring now if not yet done). DeviceUnavailableError without a usable GPU.")
      .def_property_readonly("host_threads",
                             [](const EngineBox& e) { return e.engine->host_threads(); })
      .def_property_readonly("file_fixed_ios",
                             [](const EngineBox& e) { return e.engine->file_fixed_ios(); });
  m.def("_bench_copy", &bench_copy, py::arg("engine"), py::arg("src"), py::arg("src_ids"),
        py::arg("dst"), py::arg("dst_ids"), py::arg("iterations"),
        "Seconds for `iterations` rounds of copy + wait run in C++ (for kvbm.bench).");
}

}  // namespace

void bind_transfer(py::module_& m) {
  bind_options(m);
  bind_engine(m);
}

}  // namespace kvbm::python
