#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

// Records every release into a shared journal; can be told to fail.
class RecordingHandle : public RegistrationHandle {
 public:
  RecordingHandle(std::string name, std::shared_ptr<std::vector<std::string>> journal,
                  bool fail = false)
      : name_(std::move(name)), journal_(std::move(journal)), fail_(fail) {}
  Status release() override {
    journal_->push_back(name_);
    if (fail_) return err(ErrorCode::RegistrationFailed, "backend refused to release ", name_);
    return {};
  }

 private:
  std::string name_;
  std::shared_ptr<std::vector<std::string>> journal_;
  bool fail_;
};

// Wraps a storage so the test can observe when its memory is freed relative to releases.
class JournalStorage final : public RegisterableStorage {
 public:
  explicit JournalStorage(std::shared_ptr<std::vector<std::string>> journal)
      : journal_(std::move(journal)) {}
  ~JournalStorage() override {
    release_registrations();
    journal_->push_back("memory freed");
  }
  StorageType type() const override { return StorageType::null(); }
  uint64_t addr() const override { return 0; }
  size_t size() const override { return 0; }

 private:
  std::shared_ptr<std::vector<std::string>> journal_;
};

using Journal = std::shared_ptr<std::vector<std::string>>;

TEST(Registration, RegisterLookupAndDuplicate) {
  Journal j = std::make_shared<std::vector<std::string>>();
  NullStorage s(16);
  EXPECT_FALSE(s.is_registered("ucx"));
  EXPECT_EQ(s.registration_handle("ucx"), nullptr);

  ASSERT_TRUE(s.register_handle("ucx", std::make_unique<RecordingHandle>("a", j)).ok());
  EXPECT_TRUE(s.is_registered("ucx"));
  EXPECT_NE(s.registration_handle("ucx"), nullptr);

  auto dup = s.register_handle("ucx", std::make_unique<RecordingHandle>("b", j));
  EXPECT_ERROR(dup, ErrorCode::AlreadyRegistered, "'ucx'");
  // The rejected handle is released at once; the first one stays.
  EXPECT_EQ(*j, std::vector<std::string>{"b"});
  EXPECT_TRUE(s.is_registered("ucx"));
}

TEST(Registration, RejectsEmptyKeyAndNullHandle) {
  Journal j = std::make_shared<std::vector<std::string>>();
  NullStorage s;
  EXPECT_ERROR(s.register_handle("", std::make_unique<RecordingHandle>("a", j)),
               ErrorCode::InvalidArgument, "empty");
  EXPECT_ERROR(s.register_handle("gds", nullptr), ErrorCode::InvalidArgument, "'gds'");
}

TEST(Registration, ReleasedInReverseOrderBeforeMemory) {
  Journal j = std::make_shared<std::vector<std::string>>();
  {
    JournalStorage s(j);
    for (const char* k : {"first", "second", "third"}) {
      ASSERT_TRUE(s.register_handle(k, std::make_unique<RecordingHandle>(k, j)).ok());
    }
  }
  EXPECT_EQ(*j, (std::vector<std::string>{"third", "second", "first", "memory freed"}));
}

TEST(Registration, ExplicitDeregister) {
  Journal j = std::make_shared<std::vector<std::string>>();
  NullStorage s;
  ASSERT_TRUE(s.register_handle("a", std::make_unique<RecordingHandle>("a", j)).ok());
  ASSERT_TRUE(s.register_handle("b", std::make_unique<RecordingHandle>("b", j)).ok());
  ASSERT_TRUE(s.deregister("a").ok());
  EXPECT_FALSE(s.is_registered("a"));
  EXPECT_TRUE(s.is_registered("b"));
  EXPECT_EQ(*j, std::vector<std::string>{"a"});
  EXPECT_ERROR(s.deregister("a"), ErrorCode::NotRegistered, "'a'");
}

TEST(Registration, FailingReleaseIsLoggedNotThrown) {
  Journal j = std::make_shared<std::vector<std::string>>();
  testing::LogCapture logs;
  {
    NullStorage s;
    ASSERT_TRUE(s.register_handle("ok", std::make_unique<RecordingHandle>("ok", j)).ok());
    ASSERT_TRUE(s.register_handle("bad", std::make_unique<RecordingHandle>("bad", j, true)).ok());
  }
  // The failure did not stop the remaining release.
  EXPECT_EQ(*j, (std::vector<std::string>{"bad", "ok"}));
  EXPECT_TRUE(logs.contains("failed to release registration 'bad'"));
  EXPECT_TRUE(logs.contains("backend refused to release bad"));
}

TEST(Registration, ExplicitDeregisterReturnsReleaseError) {
  Journal j = std::make_shared<std::vector<std::string>>();
  NullStorage s;
  ASSERT_TRUE(s.register_handle("bad", std::make_unique<RecordingHandle>("bad", j, true)).ok());
  EXPECT_ERROR(s.deregister("bad"), ErrorCode::RegistrationFailed, "refused");
  EXPECT_FALSE(s.is_registered("bad"));
}

TEST(Registration, MoveCarriesHandlesAndReleasesOnce) {
  Journal j = std::make_shared<std::vector<std::string>>();
  {
    auto a = SystemStorage::allocate(4096);
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE(a->register_handle("k", std::make_unique<RecordingHandle>("k", j)).ok());
    SystemStorage b = std::move(*a);
    EXPECT_TRUE(b.is_registered("k"));
    auto c = SystemStorage::allocate(4096);
    ASSERT_TRUE(c->register_handle("c", std::make_unique<RecordingHandle>("c", j)).ok());
    b = std::move(*c);  // b's old handle is released now
    EXPECT_EQ(*j, std::vector<std::string>{"k"});
  }
  EXPECT_EQ(*j, (std::vector<std::string>{"k", "c"}));
}

}  // namespace
}  // namespace kvbm
