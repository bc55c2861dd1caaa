#include "kvbm/pool/layout_alias.h"

#include <memory>

namespace kvbm {

namespace {

// A region of another storage: its type, address and size, owning nothing.
class AliasStorage final : public Storage {
 public:
  explicit AliasStorage(const Storage& s) : type_(s.type()), addr_(s.addr()), size_(s.size()) {}
  StorageType type() const override { return type_; }
  uint64_t addr() const override { return addr_; }
  size_t size() const override { return size_; }
  void* data() override { return in_memory() ? reinterpret_cast<void*>(addr_) : nullptr; }
  const void* data() const override {
    return in_memory() ? reinterpret_cast<const void*>(addr_) : nullptr;
  }

 private:
  bool in_memory() const {
    return type_.kind == StorageKind::System || type_.kind == StorageKind::Pinned ||
           type_.kind == StorageKind::Device;
  }
  StorageType type_;
  uint64_t addr_;
  size_t size_;
};

Status check_local(const Layout& layout) {
  if (layout.is_remote()) {
    return err(ErrorCode::InvalidArgument, "cannot alias a remote layout (agent ",
               layout.remote_agent(), ")");
  }
  return {};
}

}  // namespace

Result<Layout> alias_layout(const Layout& layout) {
  KVBM_TRY(check_local(layout));
  std::vector<std::unique_ptr<Storage>> regions;
  for (size_t i = 0; i < layout.num_regions(); ++i) {
    regions.push_back(std::make_unique<AliasStorage>(layout.region(i)));
  }
  return Layout::create(layout.config(), layout.kind(), std::move(regions), layout.order());
}

Result<std::vector<Layout>> layer_aliases(const Layout& layout) {
  KVBM_TRY(check_local(layout));
  if (layout.kind() != LayoutKind::LayerSeparate) {
    return err(ErrorCode::InvalidArgument, "layer aliases need a LayerSeparate layout, not ",
               to_string(layout.kind()));
  }
  LayoutConfig one = layout.config();
  one.num_layers = 1;
  std::vector<Layout> out;
  out.reserve(layout.num_regions());
  for (size_t i = 0; i < layout.num_regions(); ++i) {
    std::vector<std::unique_ptr<Storage>> region;
    region.push_back(std::make_unique<AliasStorage>(layout.region(i)));
    auto l = Layout::create(one, LayoutKind::LayerSeparate, std::move(region), layout.order());
    if (!l) return l.error();
    out.push_back(std::move(*l));
  }
  return out;
}

}  // namespace kvbm
