// Layout arithmetic, construction and the serialized form.
//
// Wire form: one CBOR (or JSON) object
//   {"v": 1, "kind": "FullyContiguous"|"LayerSeparate", "order": "BlockMajor"|"OuterMajor",
//    "config": {"blocks", "layers", "outer", "page", "inner", "dtype", "align": uint},
//    "regions": [RemoteDescriptor CBOR (bytes) or JSON (object), ...]}
// decoded with nlohmann-json without exceptions, every field checked.
#include "kvbm/layout.h"

#include <nlohmann/json.hpp>

#include "common/json_fields.h"
#include "common/nesting.h"
#include "kvbm/remote/agent_registration.h"
#include "kvbm/remote/remote_storage.h"
#include "kvbm/storage/registration.h"
#include "kvbm/xfer/mem_type.h"

namespace kvbm {
namespace {

using json = nlohmann::json;
constexpr size_t kMaxLayoutBytes = 16 << 20;
// The layout object nests three levels (object, regions, descriptor); the limit leaves room
// for additions and stays far from the stack's limit (see common/nesting.h).
constexpr size_t kMaxLayoutDepth = 32;

bool mul(size_t a, size_t b, size_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// Rounds up to a power-of-two alignment; false on overflow.
bool align_up(size_t v, size_t alignment, size_t* out) {
  size_t sum;
  if (__builtin_add_overflow(v, alignment - 1, &sum)) return false;
  *out = sum & ~(alignment - 1);
  return true;
}

struct Strides {
  size_t chunk = 0;
  size_t block_stride = 0;
  size_t chunk_stride = 0;
  std::vector<size_t> sizes;
};

Result<Strides> compute(const LayoutConfig& c, LayoutKind kind, LayerOrder order) {
  KVBM_TRY(c.validate());
  Strides s;
  s.chunk = c.chunk_bytes();  // validate() checked this product
  auto overflow = [&](const char* what) {
    return err(ErrorCode::InvalidArgument, "layout ", what, " overflows 64 bits (blocks ",
               c.num_blocks, ", layers ", c.num_layers, ", outer ", c.outer_dim, ", chunk ",
               s.chunk, " bytes, alignment ", c.alignment, ")");
  };
  size_t total = 0;
  if (kind == LayoutKind::FullyContiguous) {
    size_t per_block;
    if (!mul(c.num_layers, c.outer_dim, &per_block) || !mul(per_block, s.chunk, &per_block) ||
        !align_up(per_block, c.alignment, &s.block_stride) ||
        !mul(c.num_blocks, s.block_stride, &total)) {
      return overflow("size");
    }
    s.sizes.assign(1, total);
  } else if (order == LayerOrder::BlockMajor) {
    size_t per_block;
    if (!mul(c.outer_dim, s.chunk, &per_block) ||
        !align_up(per_block, c.alignment, &s.block_stride) ||
        !mul(c.num_blocks, s.block_stride, &total)) {
      return overflow("layer size");
    }
    s.sizes.assign(c.num_layers, total);
  } else {
    if (!align_up(s.chunk, c.alignment, &s.chunk_stride) ||
        !mul(c.num_blocks, s.chunk_stride, &total) || !mul(total, c.outer_dim, &total)) {
      return overflow("layer size");
    }
    s.sizes.assign(c.num_layers, total);
  }
  return s;
}

const char* kind_name(LayoutKind k) {
  return k == LayoutKind::FullyContiguous ? "FullyContiguous" : "LayerSeparate";
}
const char* order_name(LayerOrder o) {
  return o == LayerOrder::BlockMajor ? "BlockMajor" : "OuterMajor";
}

}  // namespace

const char* to_string(LayoutKind kind) {
  return kind_name(kind);
}
const char* to_string(LayerOrder order) {
  return order_name(order);
}

Status LayoutConfig::validate() const {
  const std::pair<const char*, size_t> dims[] = {{"num_blocks", num_blocks},
                                                 {"num_layers", num_layers},
                                                 {"page_size", page_size},
                                                 {"inner_dim", inner_dim},
                                                 {"dtype_bytes", dtype_bytes}};
  for (const auto& [name, v] : dims) {
    if (v == 0) return err(ErrorCode::InvalidArgument, "layout ", name, " must be > 0");
  }
  if (outer_dim != 1 && outer_dim != 2) {
    return err(ErrorCode::InvalidArgument, "layout outer_dim must be 1 or 2, not ", outer_dim);
  }
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return err(ErrorCode::InvalidArgument, "layout alignment ", alignment,
               " is not a power of two");
  }
  size_t chunk;
  if (!mul(page_size, inner_dim, &chunk) || !mul(chunk, dtype_bytes, &chunk)) {
    return err(ErrorCode::InvalidArgument, "layout chunk page_size ", page_size, " * inner_dim ",
               inner_dim, " * dtype_bytes ", dtype_bytes, " overflows 64 bits");
  }
  return {};
}

Layout::~Layout() = default;

Result<std::vector<size_t>> Layout::required_sizes(const LayoutConfig& config, LayoutKind kind,
                                                   LayerOrder order) {
  auto s = compute(config, kind, order);
  if (!s) return s.error();
  return std::move(s->sizes);
}

Result<Layout> Layout::build(const LayoutConfig& config, LayoutKind kind, LayerOrder order,
                             std::vector<std::unique_ptr<Storage>> regions) {
  auto s = compute(config, kind, order);
  if (!s) return s.error();
  if (regions.size() != s->sizes.size()) {
    return err(ErrorCode::InvalidArgument, kind_name(kind), " layout of ", config.num_layers,
               " layers needs ", s->sizes.size(), " region(s), got ", regions.size());
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    if (!regions[i]) return err(ErrorCode::InvalidArgument, "layout region ", i, " is null");
    const StorageType t = regions[i]->type();
    if (t.kind == StorageKind::Null) {
      return err(ErrorCode::InvalidArgument, "layout region ", i, " is Null storage");
    }
    if (i > 0 && !(t == regions[0]->type()) &&
        !(t.kind == StorageKind::Disk && regions[0]->type().kind == StorageKind::Disk)) {
      return err(ErrorCode::InvalidArgument, "layout region ", i, " is ", t.to_string(),
                 " but region 0 is ", regions[0]->type().to_string(),
                 "; a layout lives in one tier");
    }
    if (regions[i]->size() < s->sizes[i]) {
      return err(ErrorCode::OutOfBounds, "layout region ", i, " has ", regions[i]->size(),
                 " bytes; the layout needs ", s->sizes[i]);
    }
    if (regions[i]->addr() % config.alignment != 0) {
      return err(ErrorCode::InvalidArgument, "layout region ", i, " address ", regions[i]->addr(),
                 " is not a multiple of the alignment ", config.alignment);
    }
  }
  Layout l;
  l.config_ = config;
  l.kind_ = kind;
  l.order_ = kind == LayoutKind::FullyContiguous ? LayerOrder::BlockMajor : order;
  l.chunk_ = s->chunk;
  l.block_stride_ = s->block_stride;
  l.chunk_stride_ = s->chunk_stride;
  l.regions_ = std::move(regions);
  return l;
}

Result<Layout> Layout::create(const LayoutConfig& config, LayoutKind kind,
                              std::vector<std::unique_ptr<Storage>> regions, LayerOrder order) {
  for (size_t i = 0; i < regions.size(); ++i) {
    if (regions[i] && regions[i]->type().kind == StorageKind::Remote) {
      return err(ErrorCode::InvalidArgument, "layout region ", i,
                 " is Remote; peers' layouts come from Layout::from_bytes");
    }
  }
  return build(config, kind, order, std::move(regions));
}

MemoryRegion Layout::memory_region_unchecked(size_t block, size_t layer, size_t outer) const {
  MemoryRegion m;
  m.size = chunk_;
  if (kind_ == LayoutKind::FullyContiguous) {
    m.region = 0;
    m.offset = block * block_stride_ + (layer * config_.outer_dim + outer) * chunk_;
  } else if (order_ == LayerOrder::BlockMajor) {
    m.region = layer;
    m.offset = block * block_stride_ + outer * chunk_;
  } else {
    m.region = layer;
    m.offset = (outer * config_.num_blocks + block) * chunk_stride_;
  }
  m.addr = regions_[m.region]->addr() + m.offset;
  return m;
}

Layout::Strides Layout::strides() const {
  if (kind_ == LayoutKind::FullyContiguous) {
    return {block_stride_, config_.outer_dim * chunk_, chunk_, false};
  }
  if (order_ == LayerOrder::BlockMajor) return {block_stride_, 0, chunk_, true};
  return {chunk_stride_, 0, config_.num_blocks * chunk_stride_, true};
}

Result<MemoryRegion> Layout::memory_region(size_t block, size_t layer, size_t outer) const {
  if (block >= config_.num_blocks) {
    return err(ErrorCode::OutOfBounds, "block ", block, " out of range (num_blocks ",
               config_.num_blocks, ")");
  }
  if (layer >= config_.num_layers) {
    return err(ErrorCode::OutOfBounds, "layer ", layer, " out of range (num_layers ",
               config_.num_layers, ")");
  }
  if (outer >= config_.outer_dim) {
    return err(ErrorCode::OutOfBounds, "outer index ", outer, " out of range (outer_dim ",
               config_.outer_dim, ")");
  }
  return memory_region_unchecked(block, layer, outer);
}

Status Layout::register_with_agent(xfer::Agent& agent) {
  if (is_remote()) {
    return err(ErrorCode::InvalidArgument, "a remote layout (of agent '", remote_agent_,
               "') cannot be registered here");
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    auto* r = dynamic_cast<RegisterableStorage*>(regions_[i].get());
    if (r == nullptr) {
      return err(ErrorCode::InvalidArgument, "layout region ", i, " (",
                 regions_[i]->type().to_string(), ") cannot be registered");
    }
    if (is_registered_with_agent(*r)) continue;
    KVBM_TRY(kvbm::register_with_agent(*r, agent));
  }
  return {};
}

namespace {

Result<json> to_object(const Layout& l, bool binary) {
  json regions = json::array();
  for (size_t i = 0; i < l.num_regions(); ++i) {
    std::optional<RemoteDescriptor> d;
    if (l.is_remote()) {
      d = l.remote_regions()[i];
    } else {
      auto* r = dynamic_cast<const RegisterableStorage*>(&l.region(i));
      if (r == nullptr) {
        return err(ErrorCode::NotRegistered, "layout region ", i, " cannot be registered");
      }
      auto rd = remote_descriptor_of(*r);
      if (!rd) return err(rd.code(), "layout region ", i, ": ", rd.error().message);
      d = std::move(*rd);
    }
    if (binary) {
      std::string b = d->to_bytes();
      regions.push_back(json::binary_t(std::vector<uint8_t>(b.begin(), b.end())));
    } else {
      regions.push_back(json::parse(d->to_json()));
    }
  }
  const LayoutConfig& c = l.config();
  return json{{"v", Layout::kVersion},
              {"kind", kind_name(l.kind())},
              {"order", order_name(l.order())},
              {"config",
               {{"blocks", c.num_blocks},
                {"layers", c.num_layers},
                {"outer", c.outer_dim},
                {"page", c.page_size},
                {"inner", c.inner_dim},
                {"dtype", c.dtype_bytes},
                {"align", c.alignment}}},
              {"regions", std::move(regions)}};
}

Result<Layout> from_object(const json& j, bool binary);

}  // namespace

Result<std::string> Layout::to_bytes() const {
  auto j = to_object(*this, true);
  if (!j) return j.error();
  std::vector<uint8_t> cbor = json::to_cbor(*j);
  return std::string(cbor.begin(), cbor.end());
}

Result<std::string> Layout::to_json() const {
  auto j = to_object(*this, false);
  if (!j) return j.error();
  return j->dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// The layout's kind and order, by name.
Result<std::pair<LayoutKind, LayerOrder>> kind_and_order_of(const json& j) {
  auto kind_s = detail::json_string(j, "layout", "kind");
  if (!kind_s) return kind_s.error();
  LayoutKind kind;
  if (*kind_s == "FullyContiguous") {
    kind = LayoutKind::FullyContiguous;
  } else if (*kind_s == "LayerSeparate") {
    kind = LayoutKind::LayerSeparate;
  } else {
    return err(ErrorCode::InvalidArgument, "layout has unknown kind '", *kind_s, "'");
  }
  auto order_s = detail::json_string(j, "layout", "order");
  if (!order_s) return order_s.error();
  LayerOrder order;
  if (*order_s == "BlockMajor") {
    order = LayerOrder::BlockMajor;
  } else if (*order_s == "OuterMajor") {
    order = LayerOrder::OuterMajor;
  } else {
    return err(ErrorCode::InvalidArgument, "layout has unknown order '", *order_s, "'");
  }
  return std::pair{kind, order};
}

Result<LayoutConfig> config_of(const json& j) {
  auto cj = j.find("config");
  if (cj == j.end() || !cj->is_object()) {
    return err(ErrorCode::InvalidArgument, "layout lacks the object 'config'");
  }
  LayoutConfig c;
  const std::pair<const char*, size_t*> fields[] = {
      {"blocks", &c.num_blocks}, {"layers", &c.num_layers}, {"outer", &c.outer_dim},
      {"page", &c.page_size},    {"inner", &c.inner_dim},   {"dtype", &c.dtype_bytes},
      {"align", &c.alignment}};
  for (const auto& [key, dst] : fields) {
    auto f = detail::json_uint(*cj, "layout", key);
    if (!f) return f.error();
    *dst = *f;
  }
  return c;
}

// Region `i` (`e`) of a layout whose earlier regions are `descs`: a descriptor of the same
// agent and tier as region 0, holding at least `need` bytes.
Result<RemoteDescriptor> region_of(const json& e, size_t i, bool binary,
                                   const std::vector<RemoteDescriptor>& descs, size_t need) {
  Result<RemoteDescriptor> d = err(ErrorCode::InvalidArgument, "");
  if (binary && e.is_binary()) {
    const auto& b = e.get_binary();
    d = RemoteDescriptor::from_bytes(
        std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  } else if (!binary && e.is_object()) {
    d = RemoteDescriptor::from_json(e.dump());
  } else {
    return err(ErrorCode::InvalidArgument, "layout region ", i, " is not a descriptor");
  }
  if (!d) return err(ErrorCode::InvalidArgument, "layout region ", i, ": ", d.error().message);
  if (i > 0 && d->agent_name() != descs[0].agent_name()) {
    return err(ErrorCode::InvalidArgument, "layout region ", i, " belongs to agent '",
               d->agent_name(), "' but region 0 to '", descs[0].agent_name(), "'");
  }
  const RemoteStorage& rs = d->storage();
  if (rs.mem_type() == xfer::MemType::Unknown) {
    return err(ErrorCode::InvalidArgument, "layout region ", i, " has memory type UNKNOWN");
  }
  if (i > 0 && (rs.mem_type() != descs[0].storage().mem_type() ||
                (rs.mem_type() == xfer::MemType::Vram &&
                 rs.device_id() != descs[0].storage().device_id()))) {
    return err(ErrorCode::InvalidArgument, "layout region ", i, " is ",
               xfer::to_string(rs.mem_type()), " device ", rs.device_id(), " but region 0 is ",
               xfer::to_string(descs[0].storage().mem_type()), " device ",
               descs[0].storage().device_id(), "; a layout lives in one tier");
  }
  if (rs.size() < need) {
    return err(ErrorCode::InvalidArgument, "layout region ", i, " has ", rs.size(),
               " bytes; the layout needs ", need);
  }
  return d;
}

Result<Layout> from_object(const json& j, bool binary) {
  if (j.is_discarded()) return err(ErrorCode::InvalidArgument, "layout does not parse");
  if (!j.is_object()) return err(ErrorCode::InvalidArgument, "layout is not an object");
  auto v = detail::json_uint(j, "layout", "v");
  if (!v) return v.error();
  if (*v != Layout::kVersion) {
    return err(ErrorCode::InvalidArgument, "layout version ", *v, " (this build reads ",
               Layout::kVersion, ")");
  }
  auto shape = kind_and_order_of(j);
  if (!shape) return shape.error();
  const auto [kind, order] = *shape;
  auto c = config_of(j);
  if (!c) return c.error();
  auto sizes = Layout::required_sizes(*c, kind, order);
  if (!sizes) return sizes.error();
  auto rj = j.find("regions");
  if (rj == j.end() || !rj->is_array()) {
    return err(ErrorCode::InvalidArgument, "layout lacks the array 'regions'");
  }
  if (rj->size() != sizes->size()) {
    return err(ErrorCode::InvalidArgument, kind_name(kind), " layout of ", c->num_layers,
               " layers needs ", sizes->size(), " region(s), got ", rj->size());
  }
  std::vector<RemoteDescriptor> descs;
  descs.reserve(rj->size());
  for (size_t i = 0; i < rj->size(); ++i) {
    auto d = region_of((*rj)[i], i, binary, descs, (*sizes)[i]);
    if (!d) return d.error();
    descs.push_back(std::move(*d));
  }
  return Layout::from_remote(*c, kind, std::move(descs), order);
}

}  // namespace

Result<Layout> Layout::from_remote(const LayoutConfig& config, LayoutKind kind,
                                   std::vector<RemoteDescriptor> regions, LayerOrder order) {
  if (regions.empty()) return err(ErrorCode::InvalidArgument, "remote layout has no regions");
  std::vector<std::unique_ptr<Storage>> storages;
  storages.reserve(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    if (regions[i].agent_name() != regions[0].agent_name()) {
      return err(ErrorCode::InvalidArgument, "layout region ", i, " belongs to agent '",
                 regions[i].agent_name(), "' but region 0 to '", regions[0].agent_name(), "'");
    }
    storages.push_back(std::make_unique<RemoteStorage>(regions[i].storage()));
  }
  auto l = build(config, kind, order, std::move(storages));
  if (!l) return l.error();
  l->remote_agent_ = regions[0].agent_name();
  l->remote_ = std::move(regions);
  return l;
}

Result<Layout> Layout::from_bytes(std::string_view bytes) {
  KVBM_TRY(detail::check_encoded_size(bytes, "layout", kMaxLayoutBytes));
  if (detail::cbor_nests_deeper_than(bytes, kMaxLayoutDepth)) {
    return err(ErrorCode::InvalidArgument, "layout nests deeper than ", kMaxLayoutDepth, " levels");
  }
  // Even without exceptions enabled, nlohmann throws for some hostile input (a huge
  // declared array size); nothing may escape.
  try {
    return from_object(json::from_cbor(bytes.begin(), bytes.end(), true, false), true);
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "layout does not parse: ", e.what());
  }
}

Result<Layout> Layout::from_json(std::string_view text) {
  KVBM_TRY(detail::check_encoded_size(text, "layout", kMaxLayoutBytes));
  if (detail::json_nests_deeper_than(text, kMaxLayoutDepth)) {
    return err(ErrorCode::InvalidArgument, "layout nests deeper than ", kMaxLayoutDepth, " levels");
  }
  try {
    return from_object(json::parse(text.begin(), text.end(), nullptr, false), false);
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "layout does not parse: ", e.what());
  }
}

}  // namespace kvbm
