#include "xfer/etcd_client.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>

namespace kvbm::xfer::detail {
namespace {

using json = nlohmann::json;

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t append_body(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// The key just past every key that starts with `prefix` (etcd's range_end for a prefix).
std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

// etcd's JSON gateway writes 64-bit integers as strings.
int64_t json_int(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    try {
      return std::stoll(it->get<std::string>());
    } catch (...) {
      return 0;
    }
  }
  return 0;
}

std::string json_b64(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) return {};
  return base64_decode(it->get<std::string>()).value_or(std::string{});
}

Result<json> parse(std::string_view body, std::string_view what) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return err(ErrorCode::InvalidArgument, "etcd: ", what, ": the reply is not a JSON object");
  }
  return j;
}

struct CurlEasy {
  CURL* h = curl_easy_init();
  ~CurlEasy() {
    if (h) curl_easy_cleanup(h);
  }
};

void set_common(CURL* h, const std::string& url, const std::string& body, curl_slist* headers,
                std::chrono::milliseconds connect_timeout) {
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_POST, 1L);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(connect_timeout.count()));
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
  // A peer host that vanishes from the network is noticed without waiting for TCP's
  // default of hours.
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 2L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
}

struct Headers {
  curl_slist* list = curl_slist_append(nullptr, "Content-Type: application/json");
  ~Headers() { curl_slist_free_all(list); }
};

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (c == '=') {
      if (i + 2 < text.size()) return std::nullopt;  // padding only in the last two places
      ++pad;
    } else if ((!alnum && c != '+' && c != '/') || pad > 0) {
      return std::nullopt;
    }
  }
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<size_t>(n) - pad);  // EVP_DecodeBlock counts padding as zero bytes
  return out;
}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, std::chrono::milliseconds timeout)
    : endpoints_(std::move(endpoints)), timeout_(timeout) {}

EtcdClient::~EtcdClient() = default;

Result<std::unique_ptr<EtcdClient>> EtcdClient::create(std::vector<std::string> endpoints,
                                                       std::chrono::milliseconds timeout) {
  if (endpoints.empty()) return err(ErrorCode::InvalidArgument, "etcd: no endpoints given");
  if (timeout.count() <= 0) {
    return err(ErrorCode::InvalidArgument, "etcd: timeout ", timeout.count(),
               " ms is not positive");
  }
  for (auto& e : endpoints) {
    if (e.find("://") == std::string::npos) e = "http://" + e;
    if (e.rfind("http://", 0) != 0 || e.size() == 7) {
      return err(ErrorCode::InvalidArgument, "etcd endpoint '", e,
                 "' is not http://host:port (TLS endpoints are not supported)");
    }
    while (!e.empty() && e.back() == '/') e.pop_back();
  }
  init_curl_once();
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(endpoints), timeout));
}

Result<std::string> EtcdClient::call(std::string_view path, const std::string& body) {
  std::string failures;
  Headers headers;
  for (const auto& endpoint : endpoints_) {
    CurlEasy curl;
    if (!curl.h) return err(ErrorCode::Internal, "etcd: curl_easy_init failed");
    const std::string url = endpoint + std::string(path);
    std::string reply;
    set_common(curl.h, url, body, headers.list, timeout_);
    curl_easy_setopt(curl.h, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_.count()));
    curl_easy_setopt(curl.h, CURLOPT_WRITEFUNCTION, &append_body);
    curl_easy_setopt(curl.h, CURLOPT_WRITEDATA, &reply);
    const CURLcode rc = curl_easy_perform(curl.h);
    if (rc != CURLE_OK) {
      failures += (failures.empty() ? "" : "; ") + endpoint + ": " + curl_easy_strerror(rc);
      continue;
    }
    long status = 0;
    curl_easy_getinfo(curl.h, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) return reply;
    if (status >= 500) {  // this member cannot serve (no leader, shutting down): try the next
      failures += (failures.empty() ? "" : "; ") + endpoint + ": HTTP " + std::to_string(status);
      continue;
    }
    std::string message = reply.substr(0, 256);
    if (auto j = json::parse(reply, nullptr, false); j.is_object() && j.contains("error")) {
      message = j["error"].is_string() ? j["error"].get<std::string>() : message;
    }
    return err(ErrorCode::InvalidArgument, "etcd ", url, ": HTTP ", status, ": ", message);
  }
  return err(ErrorCode::Io, "etcd unreachable (", failures, ")");
}

Result<int64_t> EtcdClient::grant_lease(std::chrono::seconds ttl) {
  auto reply = call("/v3/lease/grant", json{{"TTL", ttl.count()}}.dump());
  if (!reply) return reply.error();
  auto parsed = parse(*reply, "lease grant");
  if (!parsed) return parsed.error();
  const json& j = *parsed;
  const int64_t id = json_int(j, "ID");
  if (id == 0) {
    return err(ErrorCode::Remote, "etcd: lease grant returned no lease: ", reply->substr(0, 256));
  }
  return id;
}

Status EtcdClient::keep_alive(int64_t lease) {
  auto reply = call("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump());
  if (!reply) return reply.error();
  auto parsed = parse(*reply, "lease keepalive");
  if (!parsed) return parsed.error();
  const json& j = *parsed;
  // A streamed reply: {"result": {"ID": ..., "TTL": ...}}; TTL 0 (left out) means expired.
  const json& r = j.contains("result") ? j["result"] : j;
  if (json_int(r, "TTL") <= 0) return err(ErrorCode::NotFound, "etcd: lease ", lease, " expired");
  return {};
}

Status EtcdClient::revoke_lease(int64_t lease) {
  auto reply = call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump());
  if (!reply) return reply.error();
  return {};
}

Status EtcdClient::put(std::string_view key, std::string_view value, int64_t lease) {
  json body{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  auto reply = call("/v3/kv/put", body.dump());
  if (!reply) return reply.error();
  return {};
}

Result<std::optional<std::string>> EtcdClient::get(std::string_view key) {
  auto reply = call("/v3/kv/range", json{{"key", base64_encode(key)}}.dump());
  if (!reply) return reply.error();
  auto parsed = parse(*reply, "range");
  if (!parsed) return parsed.error();
  const json& j = *parsed;
  auto kvs = j.find("kvs");
  if (kvs == j.end() || !kvs->is_array() || kvs->empty()) return std::optional<std::string>{};
  return std::optional<std::string>(json_b64((*kvs)[0], "value"));
}

Result<std::vector<EtcdKeyValue>> EtcdClient::get_prefix(std::string_view prefix) {
  auto reply = call("/v3/kv/range", json{{"key", base64_encode(prefix)},
                                         {"range_end", base64_encode(prefix_end(prefix))}}
                                        .dump());
  if (!reply) return reply.error();
  auto parsed = parse(*reply, "range");
  if (!parsed) return parsed.error();
  const json& j = *parsed;
  std::vector<EtcdKeyValue> out;
  if (auto kvs = j.find("kvs"); kvs != j.end() && kvs->is_array()) {
    for (const auto& kv : *kvs) {
      out.push_back({json_b64(kv, "key"), json_b64(kv, "value"), json_int(kv, "mod_revision")});
    }
  }
  return out;
}

Result<int64_t> EtcdClient::del(std::string_view key) {
  auto reply = call("/v3/kv/deleterange", json{{"key", base64_encode(key)}}.dump());
  if (!reply) return reply.error();
  auto parsed = parse(*reply, "deleterange");
  if (!parsed) return parsed.error();
  const json& j = *parsed;
  return json_int(j, "deleted");
}

// ---- watch ----

struct EtcdWatch::State {
  std::vector<std::string> endpoints;
  std::chrono::milliseconds timeout{};
  std::string prefix;
  EventFn on_event;
  ErrorFn on_error;
  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  bool created = false;                // the first stream was established
  std::optional<Error> first_failure;  // the first stream could not be
  int64_t next_revision = 0;           // 0: from now on
  std::string buffer;                  // bytes of the stream not yet parsed

  void handle_message(const json& message);
  // One streamed watch, until it breaks or stop() is called.
  Status stream_once();
  void run();
};

void EtcdWatch::State::handle_message(const json& message) {
  const json& r = message.contains("result") ? message["result"] : message;
  if (r.contains("header")) {
    const int64_t rev = json_int(r["header"], "revision");
    if (r.value("created", false)) {
      std::lock_guard<std::mutex> lock(mu);
      if (next_revision == 0) next_revision = rev + 1;
      created = true;
      cv.notify_all();
    }
  }
  if (r.value("canceled", false) && on_error) {
    on_error(err(ErrorCode::Remote, "etcd watch of '", prefix, "' was canceled by etcd (",
                 r.value("cancel_reason", std::string("compacted")), ")"));
    std::lock_guard<std::mutex> lock(mu);
    next_revision = 0;  // compacted past us: continue from the present
  }
  auto events = r.find("events");
  if (events == r.end() || !events->is_array()) return;
  for (const auto& e : *events) {
    const json& kv = e.contains("kv") ? e["kv"] : json::object();
    EtcdEvent ev;
    // proto3 JSON leaves out a field at its default value, and PUT is 0.
    ev.type = e.value("type", std::string("PUT")) == "DELETE" ? EtcdEvent::Type::Delete
                                                              : EtcdEvent::Type::Put;
    ev.key = json_b64(kv, "key");
    ev.value = json_b64(kv, "value");
    ev.mod_revision = json_int(kv, "mod_revision");
    {
      std::lock_guard<std::mutex> lock(mu);
      next_revision = std::max(next_revision, ev.mod_revision + 1);
    }
    if (on_event && !stopping.load()) on_event(ev);
  }
}

namespace {

size_t watch_body(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<EtcdWatch::State*>(user);
  if (state->stopping.load()) return 0;  // aborts the transfer
  state->buffer.append(data, size * count);
  if (state->buffer.size() > (64u << 20)) return 0;  // a message this large is not etcd's
  size_t nl;
  while ((nl = state->buffer.find('\n')) != std::string::npos) {
    std::string line = state->buffer.substr(0, nl);
    state->buffer.erase(0, nl + 1);
    json j = json::parse(line, nullptr, false);
    if (j.is_object()) state->handle_message(j);
  }
  return size * count;
}

int watch_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<EtcdWatch::State*>(user)->stopping.load() ? 1 : 0;
}

}  // namespace

Status EtcdWatch::State::stream_once() {
  json create{{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}};
  {
    std::lock_guard<std::mutex> lock(mu);
    if (next_revision > 0) create["start_revision"] = std::to_string(next_revision);
  }
  const std::string body = json{{"create_request", create}}.dump();
  std::string failures;
  Headers headers;
  for (const auto& endpoint : endpoints) {
    CurlEasy curl;
    if (!curl.h) return err(ErrorCode::Internal, "etcd: curl_easy_init failed");
    buffer.clear();
    set_common(curl.h, endpoint + "/v3/watch", body, headers.list, timeout);
    curl_easy_setopt(curl.h, CURLOPT_WRITEFUNCTION, &watch_body);
    curl_easy_setopt(curl.h, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(curl.h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl.h, CURLOPT_XFERINFOFUNCTION, &watch_progress);
    curl_easy_setopt(curl.h, CURLOPT_XFERINFODATA, this);
    const CURLcode rc = curl_easy_perform(curl.h);
    if (stopping.load()) return {};
    failures += (failures.empty() ? "" : "; ") + endpoint + ": " +
                (rc == CURLE_OK ? std::string("the stream ended") : curl_easy_strerror(rc));
    bool was_created;
    {
      std::lock_guard<std::mutex> lock(mu);
      was_created = created;
    }
    if (was_created) break;  // it ran and broke: report, then reconnect from the start
  }
  return err(ErrorCode::Io, "etcd watch of '", prefix, "' broke (", failures, ")");
}

void EtcdWatch::State::run() {
  while (!stopping.load()) {
    Status s = stream_once();
    if (stopping.load()) return;
    {
      std::unique_lock<std::mutex> lock(mu);
      if (!created) {  // never established: start() reports it
        first_failure = s.ok() ? err(ErrorCode::Io, "etcd watch ended") : s.error();
        cv.notify_all();
        return;
      }
      if (!s.ok() && on_error) {
        lock.unlock();
        on_error(s.error());
        lock.lock();
      }
      cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping.load(); });
    }
  }
}

EtcdWatch::EtcdWatch(std::shared_ptr<State> state) : state_(std::move(state)) {}

Result<std::unique_ptr<EtcdWatch>> EtcdWatch::start(const EtcdClient& client, std::string prefix,
                                                    EventFn on_event, ErrorFn on_error) {
  auto state = std::make_shared<State>();
  state->endpoints = client.endpoints();
  state->timeout = client.timeout();
  state->prefix = std::move(prefix);
  state->on_event = std::move(on_event);
  state->on_error = std::move(on_error);
  std::unique_ptr<EtcdWatch> watch(new EtcdWatch(state));
  watch->thread_ = std::thread([state] { state->run(); });
  std::unique_lock<std::mutex> lock(state->mu);
  const bool settled = state->cv.wait_for(lock, client.timeout() * 2, [&] {
    return state->created || state->first_failure.has_value();
  });
  if (state->created) return watch;
  Error why = settled ? *state->first_failure
                      : err(ErrorCode::Timeout, "etcd watch of '", state->prefix,
                            "' was not established within ", (client.timeout() * 2).count(), " ms");
  lock.unlock();
  watch->stop();
  return why;
}

void EtcdWatch::stop() {
  if (!state_) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping.store(true);
  }
  state_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
}

EtcdWatch::~EtcdWatch() {
  stop();
}

}  // namespace kvbm::xfer::detail
