// Memory in and out of Python: DLPack import (a layout or storage over a numpy array or a
// torch tensor) and export (views with __dlpack__), storages and allocators.
#include <cstring>

#include "common.h"

namespace kvbm::python {

namespace {

// Memory the caller owns (a numpy array, a torch tensor, an address): registerable with an
// agent like any storage; the box that holds it keeps the owner alive.
class ExternalStorage final : public RegisterableStorage {
 public:
  ExternalStorage(uint64_t addr, size_t size, StorageType type)
      : addr_(addr), size_(size), type_(type) {}
  ~ExternalStorage() override { release_registrations(); }

  StorageType type() const override { return type_; }
  uint64_t addr() const override { return addr_; }
  size_t size() const override { return size_; }
  void* data() override { return reinterpret_cast<void*>(addr_); }
  const void* data() const override { return reinterpret_cast<const void*>(addr_); }

 private:
  uint64_t addr_;
  size_t size_;
  StorageType type_;
};

std::string dims(const int64_t* v, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) {
    if (i != 0) s += ", ";
    s += std::to_string(v[i]);
  }
  s += n == 1 ? ",)" : ")";
  return s;
}

StorageType device_from_dl(int type, int64_t id) {
  switch (type) {
    case kDLCPU:
      return StorageType::system();
    case kDLCUDAHost:
      return StorageType::pinned();
    case kDLCUDA:
      return StorageType::device(static_cast<int>(id));
    default:
      throw py::value_error("DLPack device type " + std::to_string(type) +
                            " is not supported (CPU, CUDA and CUDA host memory are)");
  }
}

StorageType device_arg(py::handle d) {
  if (PyUnicode_Check(d.ptr())) {
    std::string s = d.cast<std::string>();
    if (s == "cpu") return StorageType::system();
    if (s == "pinned") return StorageType::pinned();
    if (s == "cuda") return StorageType::device(0);
    if (s.rfind("cuda:", 0) == 0) {
      try {
        size_t used = 0;
        int n = std::stoi(s.substr(5), &used);
        if (used == s.size() - 5 && n >= 0) return StorageType::device(n);
      } catch (const std::exception&) {
      }
    }
    throw py::value_error("device must be 'cpu', 'pinned', 'cuda' or 'cuda:N', got '" + s + "'");
  }
  if (PyTuple_Check(d.ptr()) && py::len(d) == 2) {
    auto t = cast_arg<std::pair<int, int64_t>>(d, "device", "(DLPack device type, id)");
    return device_from_dl(t.first, t.second);
  }
  throw py::type_error(
      "device must be a str ('cpu', 'cuda:0') or a (DLPack device type, id) "
      "tuple, got " +
      type_name(d));
}

ImportedMemory import_dlpack(py::handle obj) {
  py::object cap = obj.attr("__dlpack__")();
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor")) {
    throw py::type_error("__dlpack__() of " + type_name(obj) + " did not return a DLPack capsule");
  }
  ImportedMemory m;
  m.source.managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");  // ours now: its deleter runs with m.source
  m.source.owner = PyRef(obj);
  const DLTensor& t = m.source.managed->dl_tensor;
  if (t.dtype.lanes != 1 || t.dtype.bits % 8 != 0 || t.dtype.bits == 0) {
    throw py::value_error("unsupported element type (code " + std::to_string(t.dtype.code) + ", " +
                          std::to_string(t.dtype.bits) + " bits, " + std::to_string(t.dtype.lanes) +
                          " lanes)");
  }
  const int64_t elem = t.dtype.bits / 8;
  int64_t count = 1;
  int64_t expect = 1;  // the stride of a C-contiguous tensor, innermost first
  bool contiguous = true;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.strides != nullptr && t.shape[i] != 1 && t.strides[i] != expect) contiguous = false;
    expect *= t.shape[i];
    count *= t.shape[i];
  }
  if (!contiguous) {
    throw py::value_error(
        "the " + type_name(obj) + " is not contiguous (shape " + dims(t.shape, t.ndim) +
        ", strides " + dims(t.strides, t.ndim) +
        "): kvbm addresses blocks by offset and never copies; pass a contiguous one "
        "(tensor.contiguous(), numpy.ascontiguousarray)");
  }
  if (count == 0) throw py::value_error("the " + type_name(obj) + " is empty");
  m.addr = reinterpret_cast<uint64_t>(t.data) + t.byte_offset;
  m.bytes = static_cast<size_t>(count * elem);
  m.type = device_from_dl(t.device.device_type, t.device.device_id);
  m.dtype = t.dtype;
  m.shape.assign(t.shape, t.shape + t.ndim);
  return m;
}

}  // namespace

ImportedMemory import_memory(py::handle obj) {
  if (py::hasattr(obj, "__dlpack__")) return import_dlpack(obj);
  if (PyTuple_Check(obj.ptr()) && py::len(obj) == 3) {
    py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
    ImportedMemory m;
    auto addr = cast_arg<int64_t>(t[0], "address", "an int");
    auto size = cast_arg<int64_t>(t[1], "size", "an int");
    if (addr == 0) throw py::value_error("address must not be 0");
    if (size <= 0) throw py::value_error("size must be > 0, got " + std::to_string(size));
    m.addr = static_cast<uint64_t>(addr);
    m.bytes = static_cast<size_t>(size);
    m.type = device_arg(t[2]);
    m.shape = {size};
    return m;
  }
  throw py::type_error(
      "memory must be an object with __dlpack__ (a numpy array, a torch tensor) or an "
      "(address, size, device) tuple, got " +
      type_name(obj));
}

std::unique_ptr<Storage> storage_over(const ImportedMemory& m, bool pin) {
  if (pin) {
    if (m.type.kind != StorageKind::System) {
      throw py::value_error("pin=True pins host memory; this memory is " + m.type.to_string());
    }
    Result<PinnedStorage> p = [&] {
      py::gil_scoped_release r;
      return PinnedStorage::pin(reinterpret_cast<void*>(m.addr), m.bytes);
    }();
    return std::make_unique<PinnedStorage>(unwrap(std::move(p)));
  }
  return std::make_unique<ExternalStorage>(m.addr, m.bytes, m.type);
}

DLDevice dl_device_of(StorageType type, const char* what) {
  switch (type.kind) {
    case StorageKind::System:
    case StorageKind::Pinned:
      return {kDLCPU, 0};
    case StorageKind::Device:
      return {kDLCUDA, static_cast<int32_t>(type.id)};
    default:
      throw py::value_error(std::string(what) + " of " + type.to_string() +
                            " memory: it is not in this process's address space (copy the "
                            "blocks to a host layout first)");
  }
}

// ---- dtypes -----------------------------------------------------------------------------

namespace {

struct DtypeName {
  const char* name;
  DLDataType type;
};
constexpr DtypeName kDtypes[] = {
    {"uint8", {kDLUInt, 8, 1}},     {"int8", {kDLInt, 8, 1}},
    {"uint16", {kDLUInt, 16, 1}},   {"int16", {kDLInt, 16, 1}},
    {"uint32", {kDLUInt, 32, 1}},   {"int32", {kDLInt, 32, 1}},
    {"uint64", {kDLUInt, 64, 1}},   {"int64", {kDLInt, 64, 1}},
    {"float16", {kDLFloat, 16, 1}}, {"bfloat16", {kDLBfloat, 16, 1}},
    {"float32", {kDLFloat, 32, 1}}, {"float64", {kDLFloat, 64, 1}},
    {"half", {kDLFloat, 16, 1}},    {"float", {kDLFloat, 32, 1}},
    {"double", {kDLFloat, 64, 1}},
};

}  // namespace

DLDataType dtype_arg(py::handle obj) {
  std::string s;
  if (PyUnicode_Check(obj.ptr())) {
    s = obj.cast<std::string>();
  } else if (py::hasattr(obj, "name") && PyUnicode_Check(obj.attr("name").ptr())) {
    s = obj.attr("name").cast<std::string>();  // numpy.dtype
  } else if (PyType_Check(obj.ptr())) {
    s = obj.attr("__name__").cast<std::string>();  // numpy.float16
  } else {
    s = std::string(py::str(obj));  // torch.float16
  }
  if (s.rfind("torch.", 0) == 0) s = s.substr(6);
  for (const auto& d : kDtypes) {
    if (s == d.name) return d.type;
  }
  throw py::value_error("unknown dtype '" + s +
                        "' (uint8..int64, float16, bfloat16, float32, "
                        "float64)");
}

std::string dtype_name(DLDataType t) {
  for (const auto& d : kDtypes) {
    if (d.type.code == t.code && d.type.bits == t.bits && d.type.lanes == t.lanes) return d.name;
  }
  return "code" + std::to_string(t.code) + "x" + std::to_string(t.bits);
}

// ---- DLPack export ------------------------------------------------------------------------

namespace {

struct Exported {
  DLManagedTensor tensor{};
  std::shared_ptr<void> keep;
  std::vector<int64_t> shape, strides;
};

void delete_exported(DLManagedTensor* t) {
  delete static_cast<Exported*>(t->manager_ctx);
}

void capsule_destructor(PyObject* cap) {
  // Called with an exception possibly set; a consumer renames a capsule it took.
  if (!PyCapsule_IsValid(cap, "dltensor")) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (t != nullptr && t->deleter != nullptr) t->deleter(t);
  PyErr_Restore(type, value, tb);
}

// The DLPack capsule of a view. A consumer that asks for a versioned capsule (max_version)
// gets the unversioned one, as the protocol allows; dl_device must be the view's own and
// copy must not be True (kvbm exports its memory, never a copy).
py::object to_dlpack(const View& v, py::handle stream, py::handle max_version, py::handle dl_device,
                     py::handle copy) {
  (void)max_version;
  if (v.device.device_type == kDLCPU && !stream.is_none()) {
    throw py::value_error("stream must be None for CPU memory");
  }
  if (!copy.is_none() && copy.cast<bool>()) {
    throw py::buffer_error("kvbm views export their memory; copy=True is not supported");
  }
  if (!dl_device.is_none()) {
    auto d = cast_arg<std::pair<int, int>>(dl_device, "dl_device", "(device type, id)");
    if (d.first != v.device.device_type || d.second != v.device.device_id) {
      throw py::buffer_error("dl_device (" + std::to_string(d.first) + ", " +
                             std::to_string(d.second) + ") is not the view's device");
    }
  }
  // Nothing kvbm does is pending on a consumer's stream: a Transfer is waited for before
  // its blocks are read, so any `stream` is already in order.
  auto* e = new Exported;
  e->keep = v.keep;
  e->shape = v.shape;
  e->strides = v.strides;
  e->tensor.dl_tensor.data = reinterpret_cast<void*>(v.addr);
  e->tensor.dl_tensor.device = v.device;
  e->tensor.dl_tensor.ndim = static_cast<int32_t>(e->shape.size());
  e->tensor.dl_tensor.dtype = v.dtype;
  e->tensor.dl_tensor.shape = e->shape.data();
  e->tensor.dl_tensor.strides = e->strides.data();
  e->tensor.dl_tensor.byte_offset = 0;
  e->tensor.manager_ctx = e;
  e->tensor.deleter = &delete_exported;
  PyObject* cap = PyCapsule_New(&e->tensor, "dltensor", &capsule_destructor);
  if (cap == nullptr) {
    delete e;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
}

int64_t view_bytes(const View& v) {
  int64_t n = v.dtype.bits / 8;
  for (auto s : v.shape) n *= s;
  return n;
}

// numpy's typestr of a DLPack type ('<f2'); AttributeError (so numpy looks no further)
// for types numpy lacks.
std::string typestr(DLDataType t) {
  char kind = 0;
  if (t.code == kDLUInt) kind = 'u';
  if (t.code == kDLInt) kind = 'i';
  if (t.code == kDLFloat) kind = 'f';
  if (kind == 0) throw py::attribute_error("numpy has no " + dtype_name(t) + "; use __dlpack__");
  return std::string(t.bits == 8 ? "|" : "<") + kind + std::to_string(t.bits / 8);
}

py::dict array_interface(const View& v) {
  if (v.device.device_type != kDLCPU) {
    throw py::attribute_error("GPU memory has no __array_interface__; use __dlpack__");
  }
  py::dict d;
  std::vector<int64_t> bstrides;
  for (auto s : v.strides) bstrides.push_back(s * (v.dtype.bits / 8));
  d["shape"] = py::tuple(py::cast(v.shape));
  d["strides"] = py::tuple(py::cast(bstrides));
  d["typestr"] = typestr(v.dtype);
  d["data"] = py::make_tuple(v.addr, false);
  d["version"] = 3;
  return d;
}

RegisterableStorage& registerable(StorageBox& b) {
  auto* r = dynamic_cast<RegisterableStorage*>(b.storage.get());
  if (r == nullptr)
    throw py::value_error(b.storage->type().to_string() + " storage cannot be registered");
  return *r;
}

View storage_view(const StoragePtr& b) {
  View v;
  v.device = dl_device_of(b->storage->type(), "a view");
  v.keep = b;
  v.addr = b->storage->addr();
  v.dtype = {kDLUInt, 8, 1};
  v.shape = {static_cast<int64_t>(b->storage->size())};
  v.strides = {1};
  return v;
}

template <typename Allocator>
StoragePtr allocate_storage(const Allocator& a, size_t size) {
  auto box = std::make_shared<StorageBox>();
  auto s = [&] {
    py::gil_scoped_release r;
    return a.allocate(size);
  }();
  using S = std::decay_t<decltype(*s)>;
  box->storage = std::make_unique<S>(unwrap(std::move(s)));
  return box;
}

void bind_view(py::module_& m) {
  py::class_<View>(m, "View",
                   "An n-D array over kvbm memory (a block, a chunk, a layout, a storage). "
                   "numpy.from_dlpack / torch.from_dlpack alias it without a copy; the "
                   "memory stays alive while the view or any array made from it does.")
      .def_property_readonly("shape", [](const View& v) { return py::tuple(py::cast(v.shape)); })
      .def_property_readonly(
          "strides", [](const View& v) { return py::tuple(py::cast(v.strides)); },
          "Strides in elements.")
      .def_property_readonly("dtype", [](const View& v) { return dtype_name(v.dtype); })
      .def_property_readonly("addr", [](const View& v) { return v.addr; })
      .def_property_readonly("nbytes", &view_bytes)
      .def_property_readonly("__array_interface__", &array_interface,
                             "numpy's array interface (host memory): numpy.asarray(view) "
                             "is a writable array over the view's memory.")
      .def("__dlpack__", &to_dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const View& v) {
             return py::make_tuple(static_cast<int>(v.device.device_type), v.device.device_id);
           })
      .def("__repr__", [](const View& v) {
        return "View(shape=" + dims(v.shape.data(), static_cast<int>(v.shape.size())) +
               ", dtype=" + dtype_name(v.dtype) +
               (v.device.device_type == kDLCUDA
                    ? ", device=cuda:" + std::to_string(v.device.device_id)
                    : std::string(", device=cpu")) +
               ")";
      });
}

void bind_storage(py::module_& m) {
  py::class_<StorageBox, StoragePtr>(
      m, "Storage",
      "A region of memory or a file on one tier (from an allocator, or over caller memory "
      "with Storage.from_memory). Host and GPU storages export __dlpack__ (1-D uint8).")
      .def_static(
          "from_memory",
          [](py::handle memory, bool pin) {
            auto box = std::make_shared<StorageBox>();
            ImportedMemory im = import_memory(memory);
            box->storage = storage_over(im, pin);
            box->sources.push_back(std::move(im.source));
            return box;
          },
          py::arg("memory"), py::kw_only(), py::arg("pin") = false,
          "A storage over memory the caller owns: an object with __dlpack__ (kept alive "
          "by the storage) or an (address, size, device) tuple. pin=True page-locks host "
          "memory (cudaHostRegister; DeviceUnavailableError without a GPU).")
      .def_property_readonly("kind", [](const StorageBox& b) { return b.storage->type().kind; })
      .def_property_readonly("addr", [](const StorageBox& b) { return b.storage->addr(); })
      .def_property_readonly("size", [](const StorageBox& b) { return b.storage->size(); })
      .def_property_readonly(
          "device_id", [](const StorageBox& b) { return b.storage->type().id; },
          "CUDA ordinal (Device), file descriptor (Disk), else 0.")
      .def_property_readonly("path",
                             [](const StorageBox& b) -> py::object {
                               auto* d = dynamic_cast<const DiskStorage*>(b.storage.get());
                               if (d == nullptr) return py::none();
                               return py::str(d->path().string());
                             })
      .def_property_readonly("registered_agent",
                             [](StorageBox& b) -> py::object {
                               auto* r = dynamic_cast<RegisterableStorage*>(b.storage.get());
                               if (r == nullptr) return py::none();
                               auto n = registered_agent_name(*r);
                               return n ? py::object(py::str(*n)) : py::object(py::none());
                             })
      .def("desc_list", [](const StorageBox& b) { return unwrap(xfer::desc_list_of(*b.storage)); })
      .def(
          "remote_descriptor",
          [](StorageBox& b, py::object notification) {
            auto d = [&] {
              py::gil_scoped_release g;
              std::lock_guard l(b.mu);
              return unwrap(remote_descriptor_of(registerable(b)));
            }();
            if (!notification.is_none()) d.set_notif(bytes_arg(notification, "notification"));
            return d;
          },
          py::arg("notification") = py::none(),
          "What a peer needs to address this storage; NotRegisteredError until it is "
          "registered with an agent.")
      .def(
          "deregister",
          [](StorageBox& b) {
            py::gil_scoped_release r;
            std::lock_guard l(b.mu);
            check(deregister_from_agent(registerable(b)));
          },
          "Releases the agent registration now; NotRegisteredError if there is none.")
      .def("view", [](const StoragePtr& b) { return storage_view(b); })
      .def(
          "__dlpack__",
          [](const StoragePtr& b, py::handle stream, py::handle max_version, py::handle dl_device,
             py::handle copy) {
            return to_dlpack(storage_view(b), stream, max_version, dl_device, copy);
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const StoragePtr& b) {
             DLDevice d = dl_device_of(b->storage->type(), "a view");
             return py::make_tuple(static_cast<int>(d.device_type), d.device_id);
           })
      .def("__repr__", [](const StorageBox& b) {
        return "Storage(" + b.storage->type().to_string() +
               ", size=" + std::to_string(b.storage->size()) + ")";
      });
}

void bind_allocators(py::module_& m) {
  py::class_<SystemAllocator>(m, "SystemAllocator", "Page-aligned, zero-filled host memory.")
      .def(py::init([](bool shareable) {
             return SystemAllocator(shareable ? SystemMemory::Shareable : SystemMemory::Private);
           }),
           py::kw_only(), py::arg("shareable") = false,
           "shareable=True: a memory file a same-host peer's agent maps (faster copies "
           "between processes, no huge pages).")
      .def("allocate", &allocate_storage<SystemAllocator>, py::arg("size"))
      .def("__repr__", [](const SystemAllocator&) { return "SystemAllocator()"; });
  py::class_<PinnedAllocator>(m, "PinnedAllocator",
                              "Page-locked host memory (DeviceUnavailableError without a GPU).")
      .def(py::init<>())
      .def("allocate", &allocate_storage<PinnedAllocator>, py::arg("size"))
      .def("__repr__", [](const PinnedAllocator&) { return "PinnedAllocator()"; });
  py::class_<DeviceAllocator>(m, "DeviceAllocator", "GPU memory on one device.")
      .def(py::init([](int64_t ordinal) {
             return DeviceAllocator(static_cast<int>(index_arg(ordinal, "ordinal")));
           }),
           py::arg("ordinal") = 0)
      .def_property_readonly("ordinal", &DeviceAllocator::ordinal)
      .def("allocate", &allocate_storage<DeviceAllocator>, py::arg("size"))
      .def("__repr__", [](const DeviceAllocator& a) {
        return "DeviceAllocator(" + std::to_string(a.ordinal()) + ")";
      });
  py::class_<DiskAllocator>(m, "DiskAllocator",
                            "Files of a fixed size in `dir` (default: the temp dir), removed "
                            "when their storage goes.")
      .def(py::init([](py::object dir) {
             if (dir.is_none()) return DiskAllocator();
             return DiskAllocator(
                 std::string(py::str(py::module_::import("os").attr("fspath")(dir))));
           }),
           py::arg("dir") = py::none())
      .def_property_readonly("dir", [](const DiskAllocator& a) { return a.dir().string(); })
      .def("allocate", &allocate_storage<DiskAllocator>, py::arg("size"))
      .def("__repr__",
           [](const DiskAllocator& a) { return "DiskAllocator('" + a.dir().string() + "')"; });
}

}  // namespace

void bind_memory(py::module_& m) {
  bind_view(m);
  bind_storage(m);
  bind_allocators(m);
}

}  // namespace kvbm::python
