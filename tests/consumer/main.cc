#include <kvbm/storage.h>
#include <kvbm/version.h>

#include <cstdio>
#include <cstring>

int main() {
  // The library it runs with is the one its headers describe.
  if (std::strcmp(kvbm::version(), KVBM_VERSION_STRING) != 0) {
    std::fprintf(stderr, "libkvbm %s, headers %s\n", kvbm::version(), KVBM_VERSION_STRING);
    return 1;
  }
  auto s = kvbm::SystemAllocator().allocate(4096);
  if (!s) {
    std::fprintf(stderr, "%s\n", s.error().to_string().c_str());
    return 1;
  }
  std::memset(s->data(), 0x5a, s->size());
  std::printf("consumer: kvbm %s, %s storage of %zu bytes\n", kvbm::version(),
              s->type().to_string().c_str(), s->size());
  return static_cast<unsigned char*>(s->data())[4095] == 0x5a ? 0 : 1;
}
