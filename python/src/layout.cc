// Layouts (allocated, over caller memory, or a peer's) and their views.
#include <optional>

#include "common.h"

namespace kvbm::python {

namespace {

// Signed beyond one byte: torch has no wider unsigned types.
DLDataType default_dtype(const LayoutConfig& c) {
  switch (c.dtype_bytes) {
    case 2:
      return {kDLInt, 16, 1};
    case 4:
      return {kDLInt, 32, 1};
    case 8:
      return {kDLInt, 64, 1};
    default:
      return {kDLUInt, 8, 1};
  }
}

}  // namespace

DLDataType view_dtype(const LayoutConfig& c, py::handle dtype) {
  if (dtype.is_none()) return default_dtype(c);
  DLDataType t = dtype_arg(dtype);
  if ((c.page_size * c.inner_dim * c.dtype_bytes) % (t.bits / 8) != 0) {
    throw py::value_error("dtype " + dtype_name(t) + " does not divide a chunk of " +
                          std::to_string(c.chunk_bytes()) + " bytes");
  }
  return t;
}

namespace {

LayoutPtr box_of(Layout layout, DLDataType dtype) {
  auto box = std::make_shared<LayoutBox>();
  box->layout = std::make_unique<Layout>(std::move(layout));
  box->dtype = dtype;
  return box;
}

template <typename Allocator>
LayoutPtr allocate_with(const LayoutConfig& c, LayoutKind kind, LayerOrder order,
                        const Allocator& a, DLDataType dtype) {
  auto l = [&] {
    py::gil_scoped_release r;
    return Layout::allocate(c, kind, a, order);
  }();
  return box_of(unwrap(std::move(l)), dtype);
}

LayoutPtr allocate_layout(const LayoutConfig& c, py::handle allocator, LayoutKind kind,
                          LayerOrder order, py::handle dtype) {
  DLDataType t = view_dtype(c, dtype);
  if (py::isinstance<SystemAllocator>(allocator)) {
    return allocate_with(c, kind, order, allocator.cast<const SystemAllocator&>(), t);
  }
  if (py::isinstance<PinnedAllocator>(allocator)) {
    return allocate_with(c, kind, order, allocator.cast<const PinnedAllocator&>(), t);
  }
  if (py::isinstance<DeviceAllocator>(allocator)) {
    return allocate_with(c, kind, order, allocator.cast<const DeviceAllocator&>(), t);
  }
  if (py::isinstance<DiskAllocator>(allocator)) {
    return allocate_with(c, kind, order, allocator.cast<const DiskAllocator&>(), t);
  }
  throw py::type_error(
      "allocator must be a SystemAllocator, PinnedAllocator, DeviceAllocator "
      "or DiskAllocator, got " +
      std::string(py::str(py::type::of(allocator).attr("__name__"))));
}

// The layout's wire form; reads its regions' registrations, so it waits for a registration
// another thread is making.
std::string serialize(LayoutBox& b, bool binary) {
  Result<std::string> r = [&] {
    py::gil_scoped_release g;
    std::lock_guard l(b.mu);
    return binary ? b.layout->to_bytes() : b.layout->to_json();
  }();
  return unwrap(std::move(r));
}

bool is_address_tuple(py::handle h) {
  return PyTuple_Check(h.ptr()) && py::len(h) == 3 &&
         PyLong_Check(py::reinterpret_borrow<py::tuple>(h)[0].ptr());
}

// A config from one 5-D tensor: (blocks, layers, outer, page, inner).
LayoutConfig infer_config(const ImportedMemory& m) {
  if (m.shape.size() != 5) {
    throw py::value_error(
        "config is required unless memory is one 5-D tensor shaped "
        "(num_blocks, num_layers, outer_dim, page_size, inner_dim)");
  }
  LayoutConfig c;
  c.num_blocks = static_cast<size_t>(m.shape[0]);
  c.num_layers = static_cast<size_t>(m.shape[1]);
  c.outer_dim = static_cast<size_t>(m.shape[2]);
  c.page_size = static_cast<size_t>(m.shape[3]);
  c.inner_dim = static_cast<size_t>(m.shape[4]);
  c.dtype_bytes = m.dtype.bits / 8;
  return c;
}

LayoutPtr layout_over(py::handle memory, std::optional<LayoutConfig> config,
                      std::optional<LayoutKind> kind, LayerOrder order, bool pin) {
  std::vector<py::handle> objs;
  if (PyList_Check(memory.ptr()) || (PyTuple_Check(memory.ptr()) && !is_address_tuple(memory))) {
    for (auto h : memory) objs.push_back(h);
    if (objs.empty()) throw py::value_error("memory is an empty list");
  } else {
    objs.push_back(memory);
  }
  std::vector<ImportedMemory> imported;
  for (auto h : objs) imported.push_back(import_memory(h));
  const DLDataType dtype = imported.front().dtype;
  LayoutConfig c = config ? *config : infer_config(imported.front());
  for (size_t i = 0; i < imported.size(); ++i) {
    if (imported[i].dtype.bits != dtype.bits || imported[i].dtype.code != dtype.code) {
      throw py::value_error("memory " + std::to_string(i) + " has another dtype than memory 0");
    }
  }
  bool raw = imported.front().source.managed == nullptr;  // an (address, size, device)
  if (!raw && dtype.bits != c.dtype_bytes * 8) {
    throw py::value_error("config.dtype_bytes is " + std::to_string(c.dtype_bytes) +
                          " but the tensor's elements are " + std::to_string(dtype.bits / 8) +
                          " bytes");
  }
  LayoutKind k =
      kind ? *kind
           : (imported.size() == 1 ? LayoutKind::FullyContiguous : LayoutKind::LayerSeparate);
  auto box = std::make_shared<LayoutBox>();
  std::vector<std::unique_ptr<Storage>> regions;
  for (auto& im : imported) {
    regions.push_back(storage_over(im, pin));
    box->sources.push_back(std::move(im.source));
  }
  auto l = [&] {
    py::gil_scoped_release r;
    return Layout::create(c, k, std::move(regions), order);
  }();
  box->layout = std::make_unique<Layout>(unwrap(std::move(l)));
  box->dtype = raw ? default_dtype(c) : dtype;
  return box;
}

// ---- views ------------------------------------------------------------------------------

// A view of `shape` at `addr` with byte strides `bstrides`; the last dimension is the
// inner one, converted from the config's elements to the view dtype's.
View make_view(const LayoutPtr& b, uint64_t addr, std::vector<int64_t> shape,
               std::vector<uint64_t> bstrides) {
  const Layout& l = *b->layout;
  View v;
  v.device = dl_device_of(l.storage_type(), "a view");
  const uint64_t elem = b->dtype.bits / 8;
  const uint64_t inner_bytes = l.config().inner_dim * l.config().dtype_bytes;
  shape.push_back(static_cast<int64_t>(inner_bytes / elem));
  for (auto s : bstrides) {
    if (s % elem != 0) {
      throw py::value_error("a stride of " + std::to_string(s) + " bytes is not a multiple of " +
                            dtype_name(b->dtype) + " elements; use dtype uint8");
    }
    v.strides.push_back(static_cast<int64_t>(s / elem));
  }
  v.strides.push_back(static_cast<int64_t>(inner_bytes / elem));  // page stride
  v.strides.push_back(1);
  v.keep = b;
  v.addr = addr;
  v.shape = std::move(shape);
  v.dtype = b->dtype;
  return v;
}

View block_view(const LayoutPtr& b, int64_t block, py::object layer) {
  const Layout& l = *b->layout;
  const auto& c = l.config();
  auto st = l.strides();
  const auto P = static_cast<int64_t>(c.page_size);
  const auto O = static_cast<int64_t>(c.outer_dim);
  if (layer.is_none()) {
    if (l.kind() != LayoutKind::FullyContiguous) {
      throw py::value_error(
          "a block of a LAYER_SEPARATE layout spans one region per layer: "
          "pass layer=");
    }
    auto r = unwrap(l.memory_region(index_arg(block, "block"), 0, 0));
    return make_view(b, r.addr, {static_cast<int64_t>(c.num_layers), O, P}, {st.layer, st.outer});
  }
  auto r =
      unwrap(l.memory_region(index_arg(block, "block"),
                             index_arg(cast_arg<int64_t>(layer, "layer", "an int"), "layer"), 0));
  return make_view(b, r.addr, {O, P}, {st.outer});
}

View layout_view(const LayoutPtr& b, py::object layer) {
  const Layout& l = *b->layout;
  const auto& c = l.config();
  auto st = l.strides();
  const auto N = static_cast<int64_t>(c.num_blocks);
  const auto P = static_cast<int64_t>(c.page_size);
  const auto O = static_cast<int64_t>(c.outer_dim);
  if (layer.is_none()) {
    if (l.kind() != LayoutKind::FullyContiguous) {
      throw py::value_error("a LAYER_SEPARATE layout has one region per layer: pass layer=");
    }
    return make_view(b, l.region(0).addr(), {N, static_cast<int64_t>(c.num_layers), O, P},
                     {st.block, st.layer, st.outer});
  }
  auto r = unwrap(
      l.memory_region(0, index_arg(cast_arg<int64_t>(layer, "layer", "an int"), "layer"), 0));
  return make_view(b, r.addr, {N, O, P}, {st.block, st.outer});
}

// FNV-1a over the bytes of each block's chunks in (block, layer, outer) order.
uint64_t checksum(const LayoutPtr& b, py::object blocks) {
  const Layout& l = *b->layout;
  dl_device_of(l.storage_type(), "a checksum");
  if (l.storage_type().kind == StorageKind::Device) {
    throw py::value_error("checksum of GPU memory: copy the blocks to a host layout first");
  }
  std::vector<size_t> ids;
  if (blocks.is_none()) {
    for (size_t i = 0; i < l.config().num_blocks; ++i) ids.push_back(i);
  } else {
    ids = to_ids(blocks, "blocks");
  }
  for (size_t id : ids) unwrap(l.memory_region(id, 0, 0));
  py::gil_scoped_release r;
  uint64_t h = 14695981039346656037ull;
  for (size_t id : ids) {
    for (size_t layer = 0; layer < l.config().num_layers; ++layer) {
      for (size_t o = 0; o < l.config().outer_dim; ++o) {
        auto mr = l.memory_region_unchecked(id, layer, o);
        const auto* p = reinterpret_cast<const unsigned char*>(mr.addr);
        for (size_t i = 0; i < mr.size; ++i) h = (h ^ p[i]) * 1099511628211ull;
      }
    }
  }
  return h;
}

void bind_config(py::module_& m) {
  py::class_<LayoutConfig>(m, "LayoutConfig",
                           "The shape of a KV block layout: a chunk is page_size * inner_dim "
                           "* dtype_bytes bytes, one block's keys (outer 0) or values "
                           "(outer 1) of one layer.")
      .def(py::init([](size_t num_blocks, size_t num_layers, size_t outer_dim, size_t page_size,
                       size_t inner_dim, size_t dtype_bytes, size_t alignment) {
             LayoutConfig c{num_blocks, num_layers,  outer_dim, page_size,
                            inner_dim,  dtype_bytes, alignment};
             check(c.validate());
             return c;
           }),
           py::kw_only(), py::arg("num_blocks"), py::arg("num_layers"), py::arg("outer_dim") = 2,
           py::arg("page_size"), py::arg("inner_dim"), py::arg("dtype_bytes") = 2,
           py::arg("alignment") = 1)
      .def_readonly("num_blocks", &LayoutConfig::num_blocks)
      .def_readonly("num_layers", &LayoutConfig::num_layers)
      .def_readonly("outer_dim", &LayoutConfig::outer_dim)
      .def_readonly("page_size", &LayoutConfig::page_size)
      .def_readonly("inner_dim", &LayoutConfig::inner_dim)
      .def_readonly("dtype_bytes", &LayoutConfig::dtype_bytes)
      .def_readonly("alignment", &LayoutConfig::alignment)
      .def_property_readonly("chunk_bytes", &LayoutConfig::chunk_bytes)
      .def_property_readonly(
          "block_bytes",
          [](const LayoutConfig& c) { return c.chunk_bytes() * c.num_layers * c.outer_dim; })
      .def(
          "replace",
          [](const LayoutConfig& c, py::kwargs kw) {
            LayoutConfig n = c;
            for (auto [k, v] : kw) {
              auto key = k.cast<std::string>();
              auto val = cast_arg<size_t>(v, key.c_str(), "an int >= 0");
              if (key == "num_blocks")
                n.num_blocks = val;
              else if (key == "num_layers")
                n.num_layers = val;
              else if (key == "outer_dim")
                n.outer_dim = val;
              else if (key == "page_size")
                n.page_size = val;
              else if (key == "inner_dim")
                n.inner_dim = val;
              else if (key == "dtype_bytes")
                n.dtype_bytes = val;
              else if (key == "alignment")
                n.alignment = val;
              else
                throw py::type_error("LayoutConfig has no field '" + key + "'");
            }
            check(n.validate());
            return n;
          },
          "A copy with some fields changed.")
      .def(
          "__eq__", [](const LayoutConfig& a, const LayoutConfig& b) { return a == b; },
          py::is_operator())
      .def("__repr__", [](const LayoutConfig& c) {
        return "LayoutConfig(num_blocks=" + std::to_string(c.num_blocks) +
               ", num_layers=" + std::to_string(c.num_layers) +
               ", outer_dim=" + std::to_string(c.outer_dim) +
               ", page_size=" + std::to_string(c.page_size) +
               ", inner_dim=" + std::to_string(c.inner_dim) +
               ", dtype_bytes=" + std::to_string(c.dtype_bytes) +
               ", alignment=" + std::to_string(c.alignment) + ")";
      });
}

using LayoutClass = py::class_<LayoutBox, LayoutPtr>;

void bind_layout_making(LayoutClass& c) {
  using K = LayoutKind;
  c.def_static("allocate", &allocate_layout, py::arg("config"), py::arg("allocator"), py::kw_only(),
               py::arg("kind") = K::FullyContiguous, py::arg("order") = LayerOrder::BlockMajor,
               py::arg("dtype") = py::none(),
               "Allocates the layout's regions with `allocator`. `dtype` is the element "
               "type of views (default: uint8, int16, int32 or int64 by config.dtype_bytes).")
      .def_static("from_memory", &layout_over, py::arg("memory"), py::arg("config") = py::none(),
                  py::kw_only(), py::arg("kind") = py::none(),
                  py::arg("order") = LayerOrder::BlockMajor, py::arg("pin") = false,
                  "A layout over caller memory: an object with __dlpack__, an (address, "
                  "size, device) tuple, or a list of them (one region per layer). Without a "
                  "config, one 5-D tensor (blocks, layers, outer, page, inner) gives it.")
      .def_static(
          "from_bytes",
          [](py::handle b) {
            auto l = unwrap(Layout::from_bytes(bytes_arg(b, "data")));
            DLDataType t = default_dtype(l.config());
            return box_of(std::move(l), t);
          },
          py::arg("data"), "A peer's layout, from its to_bytes().")
      .def_static(
          "from_json",
          [](py::handle s) {
            auto l = unwrap(Layout::from_json(bytes_arg(s, "text")));
            DLDataType t = default_dtype(l.config());
            return box_of(std::move(l), t);
          },
          py::arg("text"))
      .def(
          "to_bytes", [](LayoutBox& b) { return py::bytes(serialize(b, true)); },
          "Config and region descriptors for a peer; NotRegisteredError until registered.")
      .def("to_json", [](LayoutBox& b) { return serialize(b, false); });
}

void bind_layout_access(LayoutClass& c) {
  c.def_property_readonly("config", [](const LayoutBox& b) { return b.layout->config(); })
      .def_property_readonly("kind", [](const LayoutBox& b) { return b.layout->kind(); })
      .def_property_readonly("order", [](const LayoutBox& b) { return b.layout->order(); })
      .def_property_readonly("num_blocks",
                             [](const LayoutBox& b) { return b.layout->config().num_blocks; })
      .def_property_readonly("storage_kind",
                             [](const LayoutBox& b) { return b.layout->storage_type().kind; })
      .def_property_readonly("device_id",
                             [](const LayoutBox& b) { return b.layout->storage_type().id; })
      .def_property_readonly("dtype", [](const LayoutBox& b) { return dtype_name(b.dtype); })
      .def_property_readonly("is_remote", [](const LayoutBox& b) { return b.layout->is_remote(); })
      .def_property_readonly("remote_agent",
                             [](const LayoutBox& b) { return b.layout->remote_agent(); })
      .def_property_readonly(
          "regions",
          [](const LayoutBox& b) {
            py::list out;
            for (size_t i = 0; i < b.layout->num_regions(); ++i) {
              const Storage& s = b.layout->region(i);
              out.append(py::make_tuple(s.addr(), s.size()));
            }
            return out;
          },
          "(address or file offset, size) of each region.")
      .def(
          "memory_region",
          [](const LayoutBox& b, int64_t block, int64_t layer, int64_t outer) {
            auto r = unwrap(b.layout->memory_region(
                index_arg(block, "block"), index_arg(layer, "layer"), index_arg(outer, "outer")));
            return py::make_tuple(r.addr, r.size);
          },
          py::arg("block"), py::arg("layer"), py::arg("outer") = 0,
          "(address or file offset, size) of one chunk; OutOfBoundsError naming the index.")
      .def("same_shape",
           [](const LayoutBox& a, const LayoutBox& b) { return a.layout->same_shape(*b.layout); })
      .def("block", &block_view, py::arg("block"), py::arg("layer") = py::none(),
           "A block as a View: (layers, outer, page, inner) for FULLY_CONTIGUOUS, or one "
           "layer's (outer, page, inner) with layer=.")
      .def(
          "chunk",
          [](const LayoutPtr& b, int64_t block, int64_t layer, int64_t outer) {
            auto r = unwrap(b->layout->memory_region(
                index_arg(block, "block"), index_arg(layer, "layer"), index_arg(outer, "outer")));
            return make_view(b, r.addr, {static_cast<int64_t>(b->layout->config().page_size)}, {});
          },
          py::arg("block"), py::arg("layer"), py::arg("outer") = 0,
          "One (block, layer, outer) chunk as a (page, inner) View.")
      .def("view", &layout_view, py::arg("layer") = py::none(),
           "The whole layout as one strided View: (blocks, layers, outer, page, inner), or "
           "one layer's (blocks, outer, page, inner) with layer=.")
      .def("checksum", &checksum, py::arg("blocks") = py::none(),
           "FNV-1a (64-bit) of the blocks' bytes, chunk by chunk in (block, layer, outer) "
           "order, computed by kvbm; host memory only.")
      .def("__repr__", [](const LayoutBox& b) {
        const auto& l = *b.layout;
        return std::string("Layout(") + to_string(l.kind()) + ", " + l.storage_type().to_string() +
               ", num_blocks=" + std::to_string(l.config().num_blocks) +
               ", dtype=" + dtype_name(b.dtype) + ")";
      });
}

}  // namespace

void bind_layout(py::module_& m) {
  bind_config(m);
  LayoutClass c(m, "Layout",
                "KV blocks over one tier: allocated (Layout.allocate), over memory the "
                "caller owns (Layout.from_memory, which keeps that object alive), or a "
                "peer's (Layout.from_bytes).");
  bind_layout_making(c);
  bind_layout_access(c);
}

}  // namespace kvbm::python
