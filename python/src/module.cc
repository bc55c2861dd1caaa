// The kvbm._kvbm extension: errors, enums, argument helpers, descriptors.
#include <cmath>
#include <cstring>

#include "common.h"
#include "kvbm/cuda.h"
#include "kvbm/log.h"

namespace kvbm::python {

namespace {

constexpr ErrorCode kCodes[] = {
    ErrorCode::AllocationFailed,
    ErrorCode::OutOfBounds,
    ErrorCode::RegistrationFailed,
    ErrorCode::AlreadyRegistered,
    ErrorCode::NotRegistered,
    ErrorCode::DeviceUnavailable,
    ErrorCode::InvalidArgument,
    ErrorCode::Io,
    ErrorCode::Unsupported,
    ErrorCode::NotFound,
    ErrorCode::Timeout,
    ErrorCode::Remote,
    ErrorCode::Cancelled,
    ErrorCode::Internal,
};
constexpr size_t kNumCodes = sizeof(kCodes) / sizeof(kCodes[0]);

// kvbm._errors' classes by code; leaked on purpose (they must outlive interpreter teardown).
PyObject* g_error_classes[kNumCodes] = {};

PyObject* error_class(ErrorCode code) {
  auto i = static_cast<size_t>(code);
  return i < kNumCodes ? g_error_classes[i] : g_error_classes[kNumCodes - 1];
}

}  // namespace

py::object make_exception(const Error& e) {
  py::handle cls(error_class(e.code));
  return cls(py::str(e.message));
}

PyRef::~PyRef() {
  if (p_ == nullptr || !Py_IsInitialized()) return;
  PyGILState_STATE s = PyGILState_Ensure();
  Py_DECREF(p_);
  PyGILState_Release(s);
}

ExternalSource::~ExternalSource() {
  if (managed == nullptr || managed->deleter == nullptr || !Py_IsInitialized()) return;
  // Some producers' deleters (numpy's) touch Python objects without taking the GIL.
  PyGILState_STATE s = PyGILState_Ensure();
  managed->deleter(managed);
  PyGILState_Release(s);
}

std::vector<size_t> to_ids(py::handle obj, const char* name) {
  if (PyLong_Check(obj.ptr()) || PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be a sequence of block ids, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  py::object seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(obj.ptr(), "block ids must be a sequence of ints"));
  if (!seq) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be a sequence of block ids, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<size_t> ids(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    long long v;
    if (PyLong_CheckExact(item)) {
      v = PyLong_AsLongLong(item);
    } else {
      if (PyFloat_Check(item) || PyBool_Check(item)) {
        throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be an int");
      }
      py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(item));
      if (!idx) {
        PyErr_Clear();
        throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] must be an int");
      }
      v = PyLong_AsLongLong(idx.ptr());
    }
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (v < 0) {
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is " +
                            std::to_string(v) + ": block ids must be >= 0");
    }
    ids[static_cast<size_t>(i)] = static_cast<size_t>(v);
  }
  return ids;
}

std::string type_name(py::handle obj) {
  return std::string(py::str(py::type::of(obj).attr("__name__")));
}

std::string bytes_arg(py::handle obj, const char* name) {
  if (PyBytes_Check(obj.ptr())) return std::string(py::reinterpret_borrow<py::bytes>(obj));
  if (PyUnicode_Check(obj.ptr())) return obj.cast<std::string>();
  if (PyObject_CheckBuffer(obj.ptr())) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    return std::string(static_cast<const char*>(info.ptr),
                       static_cast<size_t>(info.size * info.itemsize));
  }
  throw py::type_error(std::string(name) + " must be bytes or str, got " +
                       std::string(py::str(py::type::of(obj).attr("__name__"))));
}

std::chrono::milliseconds timeout_arg(py::handle seconds) {
  if (seconds.is_none()) return std::chrono::hours(24);
  auto s = cast_arg<double>(seconds, "timeout", "a number of seconds or None");
  if (std::isnan(s) || s < 0) {
    throw py::value_error("timeout must be >= 0 seconds, got " + std::to_string(s));
  }
  if (s > 86400.0 * 365) return std::chrono::hours(24 * 365);
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000.0)));
}

size_t index_arg(int64_t v, const char* name) {
  if (v < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(v));
  return static_cast<size_t>(v);
}

namespace {

// "OutOfBounds" -> "OUT_OF_BOUNDS", as the other enums' members are spelled.
std::string upper_snake(const std::string& camel) {
  std::string out;
  for (size_t i = 0; i < camel.size(); ++i) {
    char c = camel[i];
    if (i > 0 && c >= 'A' && c <= 'Z') out += '_';
    out += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  }
  return out;
}

void bind_errors(py::module_& m) {
  py::enum_<ErrorCode> code(m, "ErrorCode", "The code of a kvbm.Error (kvbm/result.h).");
  py::module_ errors = py::module_::import("kvbm._errors");
  for (size_t i = 0; i < kNumCodes; ++i) {
    std::string name(to_string(kCodes[i]));
    code.value(upper_snake(name).c_str(), kCodes[i]);
    py::object cls = errors.attr((name + "Error").c_str());
    g_error_classes[i] = cls.inc_ref().ptr();
  }
  for (size_t i = 0; i < kNumCodes; ++i) {
    py::handle(g_error_classes[i]).attr("code") = py::cast(kCodes[i]);
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const KvbmException& e) {
      py::object inst = make_exception(e.error);
      PyErr_SetObject(error_class(e.error.code), inst.ptr());
    } catch (const py::cast_error& e) {
      // An argument of the wrong type that no cast_arg() named.
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
}

void bind_enums(py::module_& m) {
  py::enum_<StorageKind>(m, "StorageKind", "The tier a storage lives in.")
      .value("SYSTEM", StorageKind::System)
      .value("PINNED", StorageKind::Pinned)
      .value("DEVICE", StorageKind::Device)
      .value("DISK", StorageKind::Disk)
      .value("REMOTE", StorageKind::Remote)
      .value("NULL", StorageKind::Null);
  py::enum_<xfer::MemType>(m, "MemType", "The agent's memory types.")
      .value("DRAM", xfer::MemType::Dram)
      .value("VRAM", xfer::MemType::Vram)
      .value("FILE", xfer::MemType::File)
      .value("UNKNOWN", xfer::MemType::Unknown);
  py::enum_<LayoutKind>(m, "LayoutKind")
      .value("FULLY_CONTIGUOUS", LayoutKind::FullyContiguous)
      .value("LAYER_SEPARATE", LayoutKind::LayerSeparate);
  py::enum_<LayerOrder>(m, "LayerOrder")
      .value("BLOCK_MAJOR", LayerOrder::BlockMajor)
      .value("OUTER_MAJOR", LayerOrder::OuterMajor);
  py::enum_<TransferPath>(m, "TransferPath")
      .value("HOST", TransferPath::Host)
      .value("CUDA", TransferPath::Cuda)
      .value("FILE", TransferPath::File)
      .value("REMOTE", TransferPath::Remote)
      .value("STAGED", TransferPath::Staged);
  py::enum_<xfer::Op>(m, "Op").value("READ", xfer::Op::Read).value("WRITE", xfer::Op::Write);
  py::enum_<xfer::XferState>(m, "XferState")
      .value("IDLE", xfer::XferState::Idle)
      .value("IN_PROGRESS", xfer::XferState::InProgress)
      .value("DONE", xfer::XferState::Done)
      .value("ERROR", xfer::XferState::Error);
}

std::vector<py::tuple> descs_of(const xfer::DescList& d) {
  std::vector<py::tuple> out;
  for (const auto& x : d.descs) out.push_back(py::make_tuple(x.addr, x.len, x.dev_id));
  return out;
}

void bind_desc_list(py::module_& m) {
  py::class_<xfer::DescList>(m, "DescList",
                             "Ranges of one memory type for an agent request: "
                             "(address or file offset, length, device id) tuples.")
      .def(py::init([](xfer::MemType type,
                       const std::vector<std::tuple<uint64_t, uint64_t, uint64_t>>& descs) {
             xfer::DescList d(type);
             for (auto& [a, l, dev] : descs) d.add(a, l, dev);
             return d;
           }),
           py::arg("mem_type"),
           py::arg("descs") = std::vector<std::tuple<uint64_t, uint64_t, uint64_t>>{})
      .def_readonly("mem_type", &xfer::DescList::type)
      .def_property_readonly("descs", &descs_of)
      .def("append", &xfer::DescList::add, py::arg("addr"), py::arg("len"), py::arg("dev_id") = 0)
      .def("__len__", &xfer::DescList::size)
      .def(
          "__eq__", [](const xfer::DescList& a, const xfer::DescList& b) { return a == b; },
          py::is_operator())
      .def("__repr__", [](const xfer::DescList& d) {
        return "DescList(" + std::string(to_string(d.type)) + ", " +
               std::string(py::repr(py::cast(descs_of(d)))) + ")";
      });
}

void bind_remote_descriptor(py::module_& m) {
  py::class_<RemoteDescriptor>(
      m, "RemoteDescriptor",
      "Memory registered with an agent, as a peer addresses it: address (file offset for "
      "files), size, memory type, device id, agent name, optional notification. "
      "Serializes to bytes (CBOR) and JSON; decoding treats the input as untrusted.")
      .def(py::init([](uint64_t addr, size_t size, xfer::MemType mem_type, uint64_t device_id,
                       std::string agent, py::object notification) {
             if (agent.empty()) throw py::value_error("agent must not be empty");
             RemoteDescriptor d(RemoteStorage(addr, size, mem_type, device_id), std::move(agent));
             if (!notification.is_none()) d.set_notif(bytes_arg(notification, "notification"));
             return d;
           }),
           py::arg("addr"), py::arg("size"), py::arg("mem_type"), py::arg("device_id"),
           py::arg("agent"), py::arg("notification") = py::none())
      .def_property_readonly("addr", [](const RemoteDescriptor& d) { return d.storage().addr(); })
      .def_property_readonly("size", &RemoteDescriptor::size)
      .def_property_readonly("mem_type",
                             [](const RemoteDescriptor& d) { return d.storage().mem_type(); })
      .def_property_readonly("device_id",
                             [](const RemoteDescriptor& d) { return d.storage().device_id(); })
      .def_property_readonly("agent", &RemoteDescriptor::agent_name)
      .def_property(
          "notification",
          [](const RemoteDescriptor& d) -> py::object {
            if (!d.notif()) return py::none();
            return py::bytes(*d.notif());
          },
          [](RemoteDescriptor& d, py::object n) {
            if (n.is_none()) {
              d.clear_notif();
            } else {
              d.set_notif(bytes_arg(n, "notification"));
            }
          },
          "bytes delivered to the owner after a READ or WRITE of it, or None.")
      .def("desc_list", &RemoteDescriptor::to_desc_list)
      .def(
          "slice",
          [](const RemoteDescriptor& d, size_t offset, size_t size) {
            RemoteDescriptor out(unwrap(d.storage().slice(offset, size)), d.agent_name());
            if (d.notif()) out.set_notif(*d.notif());
            return out;
          },
          py::arg("offset"), py::arg("size"),
          "The descriptor of `size` bytes at `offset`; OutOfBoundsError when it does not fit.")
      .def("to_bytes", [](const RemoteDescriptor& d) { return py::bytes(d.to_bytes()); })
      .def("to_json", &RemoteDescriptor::to_json)
      .def_static(
          "from_bytes",
          [](py::handle b) { return unwrap(RemoteDescriptor::from_bytes(bytes_arg(b, "data"))); },
          py::arg("data"))
      .def_static(
          "from_json",
          [](py::handle s) { return unwrap(RemoteDescriptor::from_json(bytes_arg(s, "text"))); },
          py::arg("text"))
      .def(
          "__eq__", [](const RemoteDescriptor& a, const RemoteDescriptor& b) { return a == b; },
          py::is_operator())
      .def("__repr__", [](const RemoteDescriptor& d) {
        return "RemoteDescriptor(addr=" + std::to_string(d.storage().addr()) +
               ", size=" + std::to_string(d.size()) +
               ", mem_type=" + to_string(d.storage().mem_type()) +
               ", device_id=" + std::to_string(d.storage().device_id()) + ", agent='" +
               d.agent_name() + "')";
      });
}

LogLevel parse_level(const std::string& s) {
  if (s == "debug") return LogLevel::Debug;
  if (s == "info") return LogLevel::Info;
  if (s == "warn" || s == "warning") return LogLevel::Warn;
  if (s == "error") return LogLevel::Error;
  if (s == "off") return LogLevel::Off;
  throw py::value_error("log level must be debug, info, warn, error or off, got '" + s + "'");
}

}  // namespace

void bind_module(py::module_& m) {
  bind_errors(m);
  bind_enums(m);
  bind_desc_list(m);
  bind_remote_descriptor(m);
  m.def("built_with_cuda", &built_with_cuda, "True when kvbm was compiled with CUDA support.");
  m.def(
      "cuda_device_count", [] { return unwrap(cuda_device_count()); },
      "The number of usable GPUs; DeviceUnavailableError (with CUDA's reason) if none.");
  m.def(
      "set_log_level", [](const std::string& s) { set_log_level(parse_level(s)); },
      py::arg("level"), "Level of kvbm's own log on stderr: debug, info, warn, error, off.");
}

}  // namespace kvbm::python

PYBIND11_MODULE(_kvbm, m) {
  m.doc() = "kvbm's C++ core; use the `kvbm` package.";
  kvbm::python::bind_module(m);
  kvbm::python::bind_memory(m);
  kvbm::python::bind_layout(m);
  kvbm::python::bind_transfer(m);
  kvbm::python::bind_agent(m);
  kvbm::python::bind_pool(m);
}
