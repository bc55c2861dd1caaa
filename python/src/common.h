// What the binding's translation units share: error translation, argument helpers, and
// the "boxes" that the Python objects hold.
//
// Ownership: every Python object holds a shared_ptr to a box; a box holds what the C++
// object it wraps needs alive (the agents a storage or layout is registered with, the
// Python objects whose memory a layout is built over, the engine and layouts of a
// transfer). Members are declared in the order that makes the C++ object go first, so
// registrations are released before their agent, and memory is freed after everything
// that points into it. A box may be dropped from any thread (a DLPack consumer's
// deleter), so the Python references it holds take the GIL on release.
#pragma once

#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kvbm/layout.h"
#include "kvbm/remote.h"
#include "kvbm/result.h"
#include "kvbm/storage.h"
#include "kvbm/transfer.h"
#include "kvbm/xfer.h"

namespace kvbm::python {

namespace py = pybind11;

// ---- errors -----------------------------------------------------------------------------

// Thrown by unwrap()/check(); translated into the kvbm.Error subclass of its code.
struct KvbmException {
  Error error;
};
[[noreturn]] inline void raise(Error e) {
  throw KvbmException{std::move(e)};
}
inline void check(const Status& s) {
  if (!s) raise(s.error());
}
template <typename T>
T unwrap(Result<T>&& r) {
  if (!r) raise(r.error());
  return std::move(r).value();
}
// The kvbm.Error subclass instance for `e` (not raised).
py::object make_exception(const Error& e);

// ---- the GIL ----------------------------------------------------------------------------

// Releases the GIL for its scope where this thread holds it (destructors run both from
// Python's deallocation, GIL held, and from DLPack deleters on other threads).
class MaybeReleaseGil {
 public:
  MaybeReleaseGil() {
    if (Py_IsInitialized() && PyGILState_Check()) state_ = PyEval_SaveThread();
  }
  ~MaybeReleaseGil() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  MaybeReleaseGil(const MaybeReleaseGil&) = delete;
  MaybeReleaseGil& operator=(const MaybeReleaseGil&) = delete;

 private:
  PyThreadState* state_ = nullptr;
};

// A strong reference to a Python object that can be dropped from any thread.
class PyRef {
 public:
  PyRef() = default;
  explicit PyRef(py::handle h) : p_(h.ptr()) { Py_XINCREF(p_); }
  PyRef(PyRef&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  PyRef& operator=(PyRef&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  PyRef(const PyRef&) = delete;
  ~PyRef();
  PyObject* get() const { return p_; }

 private:
  PyObject* p_ = nullptr;
};

// Memory a layout or storage was built over: the caller's object, and the DLPack tensor
// taken from it (its deleter is called, with the GIL, when the memory is no longer used).
struct ExternalSource {
  PyRef owner;
  DLManagedTensor* managed = nullptr;
  ExternalSource() = default;
  ExternalSource(ExternalSource&& o) noexcept : owner(std::move(o.owner)), managed(o.managed) {
    o.managed = nullptr;
  }
  ~ExternalSource();
};

// ---- boxes ------------------------------------------------------------------------------

struct AgentBox {
  std::unique_ptr<xfer::Agent> agent;
  std::mutex mu;                           // guards pending
  std::deque<xfer::Notification> pending;  // received, not yet handed out
  ~AgentBox() {
    MaybeReleaseGil g;
    agent.reset();
  }
};
using AgentPtr = std::shared_ptr<AgentBox>;

struct StorageBox {
  std::vector<AgentPtr> agents;  // registered with (outlive the storage's registrations)
  std::vector<ExternalSource> sources;
  std::unique_ptr<Storage> storage;
  std::mutex mu;  // registration
  DLDataType dtype{kDLUInt, 8, 1};
  ~StorageBox() {
    MaybeReleaseGil g;
    storage.reset();
  }
};
using StoragePtr = std::shared_ptr<StorageBox>;

struct LayoutBox {
  std::vector<AgentPtr> agents;
  std::vector<ExternalSource> sources;
  // Owned, or (aliasing) a layout inside another object, such as a block manager's tier,
  // that the pointer keeps alive.
  std::shared_ptr<Layout> layout;
  std::mutex mu;                    // registration
  DLDataType dtype{kDLUInt, 8, 1};  // element type of views
  ~LayoutBox() {
    MaybeReleaseGil g;
    layout.reset();
  }
};
using LayoutPtr = std::shared_ptr<LayoutBox>;

// ---- memory taken from Python objects ----------------------------------------------------

// Memory described by a DLPack object or an (address, size, device) tuple.
struct ImportedMemory {
  uint64_t addr = 0;
  size_t bytes = 0;
  StorageType type;
  DLDataType dtype{kDLUInt, 8, 1};
  std::vector<int64_t> shape;
  ExternalSource source;
};
// TypeError for an object that is neither; ValueError for a non-contiguous tensor, an
// empty one, or a device kvbm does not handle.
ImportedMemory import_memory(py::handle obj);
// A storage over imported memory (pinned with cudaHostRegister when `pin`).
std::unique_ptr<Storage> storage_over(const ImportedMemory& m, bool pin);

// ---- argument helpers -------------------------------------------------------------------

// The name of obj's Python type, for error messages.
std::string type_name(py::handle obj);

// A list of block ids from a sequence of ints or a 1-D integer numpy array; TypeError for
// other objects, ValueError naming a negative id.
std::vector<size_t> to_ids(py::handle obj, const char* name);
// bytes, bytearray, memoryview or str (UTF-8); TypeError otherwise.
std::string bytes_arg(py::handle obj, const char* name);
// Seconds (None: a day) as milliseconds; ValueError for a negative or NaN value.
std::chrono::milliseconds timeout_arg(py::handle seconds);
// obj as a T; TypeError "NAME must be EXPECTED, got TYPE" when it is not one.
template <typename T>
T cast_arg(py::handle obj, const char* name, const char* expected) {
  try {
    return obj.cast<T>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(name) + " must be " + expected + ", got " + type_name(obj));
  }
}
// Non-negative index; ValueError otherwise.
size_t index_arg(int64_t v, const char* name);

// A DLPack element type from a name ("float16", "torch.bfloat16", a numpy dtype...).
DLDataType dtype_arg(py::handle obj);
std::string dtype_name(DLDataType t);
// The element type of a layout's views: `dtype` (ValueError when it does not divide a
// chunk), or for None ints of config.dtype_bytes (signed beyond one byte).
DLDataType view_dtype(const LayoutConfig& c, py::handle dtype);

// A view of memory as an n-D array that keeps `keep` alive (see memory.cc).
struct View {
  std::shared_ptr<void> keep;
  uint64_t addr = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  DLDataType dtype{kDLUInt, 8, 1};
  DLDevice device{kDLCPU, 0};
};
// The DLPack device of a storage type; ValueError for Disk, Remote and Null.
DLDevice dl_device_of(StorageType type, const char* what);

void bind_module(py::module_& m);
void bind_memory(py::module_& m);
void bind_layout(py::module_& m);
void bind_transfer(py::module_& m);
void bind_agent(py::module_& m);
void bind_pool(py::module_& m);

}  // namespace kvbm::python
