#include <kvbm/storage.h>

#include <cstdio>
#include <cstring>

int main() {
  auto s = kvbm::SystemAllocator().allocate(4096);
  if (!s) {
    std::fprintf(stderr, "%s\n", s.error().to_string().c_str());
    return 1;
  }
  std::memset(s->data(), 0x5a, s->size());
  std::printf("consumer: %s storage of %zu bytes\n", s->type().to_string().c_str(), s->size());
  return static_cast<unsigned char*>(s->data())[4095] == 0x5a ? 0 : 1;
}
