// The transfer agent: backends, registration, metadata, publish/fetch, READ/WRITE
// requests, notifications.
#include <cmath>
#include <optional>
#include <thread>

#include "common.h"

namespace kvbm::python {

namespace {

using namespace std::chrono_literals;

// A registration of raw ranges; released before its agent goes.
struct RegistrationBox {
  AgentPtr agent;
  std::mutex mu;
  std::unique_ptr<xfer::MemoryRegistration> reg;
  ~RegistrationBox() {
    MaybeReleaseGil g;
    reg.reset();
  }
};
using RegistrationPtr = std::shared_ptr<RegistrationBox>;

// A request, the agent it belongs to and the local memory it reads or writes.
struct RequestBox {
  AgentPtr agent;
  std::vector<std::shared_ptr<void>> keep;
  std::mutex mu;  // a Request is used from one thread at a time
  std::unique_ptr<xfer::Request> req;
  ~RequestBox() {
    MaybeReleaseGil g;
    req.reset();
  }
};
using RequestPtr = std::shared_ptr<RequestBox>;

xfer::Agent& A(const AgentPtr& a) {
  return *a->agent;
}

RegisterableStorage& registerable(Storage& s, const char* what) {
  auto* r = dynamic_cast<RegisterableStorage*>(&s);
  if (r == nullptr) throw py::value_error(std::string(what) + " cannot be registered");
  return *r;
}

void register_obj(const AgentPtr& a, py::handle obj, const std::string& backend) {
  if (py::isinstance<StorageBox>(obj)) {
    auto box = obj.cast<StoragePtr>();
    {
      py::gil_scoped_release g;
      std::lock_guard l(box->mu);
      check(register_with_agent(registerable(*box->storage, "this storage"), A(a), {backend}));
      box->agents.push_back(a);
    }
    return;
  }
  if (py::isinstance<LayoutBox>(obj)) {
    auto box = obj.cast<LayoutPtr>();
    if (box->layout->is_remote()) {
      throw py::value_error("a peer's layout (of agent '" + box->layout->remote_agent() +
                            "') cannot be registered here");
    }
    py::gil_scoped_release g;
    std::lock_guard l(box->mu);
    box->agents.push_back(a);  // before any region holds a registration of it
    for (size_t i = 0; i < box->layout->num_regions(); ++i) {
      auto& r = registerable(box->layout->region(i), "this layout's storage");
      if (is_registered_with_agent(r)) continue;
      check(register_with_agent(r, A(a), {backend}));
    }
    return;
  }
  throw py::type_error(
      "register() takes a kvbm.Storage or kvbm.Layout; use register_memory() "
      "for raw ranges");
}

xfer::DescList local_arg(py::handle local, std::vector<std::shared_ptr<void>>& keep) {
  if (py::isinstance<xfer::DescList>(local)) return local.cast<xfer::DescList>();
  if (py::isinstance<StorageBox>(local)) {
    auto box = local.cast<StoragePtr>();
    keep.push_back(box);
    return unwrap(xfer::desc_list_of(*box->storage));
  }
  throw py::type_error("local must be a kvbm.Storage or a kvbm.DescList");
}

RequestPtr make_request(const AgentPtr& a, xfer::Op op, py::handle local, py::handle remote,
                        py::handle peer, py::handle notification, bool post) {
  auto box = std::make_shared<RequestBox>();
  box->agent = a;
  xfer::DescList l = local_arg(local, box->keep);
  xfer::DescList r;
  std::string peer_name;
  std::optional<std::string> notif;
  if (py::isinstance<RemoteDescriptor>(remote)) {
    const auto& d = remote.cast<const RemoteDescriptor&>();
    r = d.to_desc_list();
    peer_name = d.agent_name();
    notif = d.notif();
  } else if (py::isinstance<xfer::DescList>(remote)) {
    r = remote.cast<xfer::DescList>();
  } else {
    throw py::type_error("remote must be a kvbm.RemoteDescriptor or a kvbm.DescList");
  }
  if (!peer.is_none()) peer_name = cast_arg<std::string>(peer, "peer", "an agent name");
  if (peer_name.empty()) throw py::value_error("peer is required with a DescList remote");
  if (!notification.is_none()) notif = bytes_arg(notification, "notification");
  py::gil_scoped_release g;
  box->req = unwrap(A(a).create_request(op, l, r, peer_name, notif));
  if (post) check(box->req->post());
  return box;
}

std::optional<xfer::Notification> take_matching(AgentBox& a, const std::optional<std::string>& peer,
                                                const std::optional<std::string>& message) {
  std::lock_guard l(a.mu);
  for (auto& n : a.agent->get_notifs()) a.pending.push_back(std::move(n));
  for (auto it = a.pending.begin(); it != a.pending.end(); ++it) {
    if (peer && it->agent != *peer) continue;
    if (message && it->message != *message) continue;
    xfer::Notification n = std::move(*it);
    a.pending.erase(it);
    return n;
  }
  return std::nullopt;
}

xfer::Notification wait_notification(const AgentPtr& a, py::handle timeout, py::handle peer,
                                     py::handle message) {
  auto ms = timeout_arg(timeout);
  std::optional<std::string> p, msg;
  if (!peer.is_none()) p = cast_arg<std::string>(peer, "peer", "an agent name");
  if (!message.is_none()) msg = bytes_arg(message, "message");
  py::gil_scoped_release g;
  const auto deadline = std::chrono::steady_clock::now() + ms;
  for (;;) {
    if (auto n = take_matching(*a, p, msg)) return std::move(*n);
    if (std::chrono::steady_clock::now() >= deadline) {
      raise(err(ErrorCode::Timeout, "no notification", p ? " from '" + *p + "'" : "", " within ",
                ms.count(), " ms"));
    }
    A(a).progress();
    std::this_thread::sleep_for(200us);
  }
}

// etcd discovery and authentication (AgentConfig's etcd_* and auth_key).
void set_discovery(xfer::AgentConfig& c, py::object endpoints, const std::string& prefix,
                   double lease_ttl, py::object auth_key) {
  if (PyUnicode_Check(endpoints.ptr())) {
    throw py::type_error("etcd_endpoints must be a list of endpoints");
  }
  if (!endpoints.is_none()) {
    c.etcd_endpoints =
        cast_arg<std::vector<std::string>>(endpoints, "etcd_endpoints", "a list of endpoints");
  }
  c.etcd_prefix = prefix;
  if (!(lease_ttl >= 1) || lease_ttl > 86400.0 * 365) {
    throw py::value_error("etcd_lease_ttl must be 1 s..1 year, got " + std::to_string(lease_ttl));
  }
  c.etcd_lease_ttl = std::chrono::seconds(static_cast<int64_t>(std::ceil(lease_ttl)));
  if (!auth_key.is_none()) c.auth_key = bytes_arg(auth_key, "auth_key");
}

AgentPtr make_agent(const std::string& name, py::object backends, bool progress_thread,
                    double peer_timeout, bool add_cuda_if_gpu, size_t max_metadata_bytes,
                    py::object etcd_endpoints, const std::string& etcd_prefix,
                    double etcd_lease_ttl, py::object auth_key) {
  xfer::AgentConfig c;
  if (PyUnicode_Check(backends.ptr())) throw py::type_error("backends must be a list of names");
  if (!backends.is_none()) {
    c.backends = cast_arg<std::vector<std::string>>(backends, "backends", "a list of names");
  }
  c.progress_thread = progress_thread;
  c.peer_timeout = timeout_arg(py::float_(peer_timeout));
  c.add_cuda_if_gpu = add_cuda_if_gpu;
  c.max_metadata_bytes = max_metadata_bytes;
  set_discovery(c, etcd_endpoints, etcd_prefix, etcd_lease_ttl, auth_key);
  auto box = std::make_shared<AgentBox>();
  auto a = [&] {
    py::gil_scoped_release g;
    return xfer::Agent::create(name, c);
  }();
  box->agent = unwrap(std::move(a));
  return box;
}

void bind_notification(py::module_& m) {
  py::class_<xfer::Notification>(m, "Notification", "A notification as received.")
      .def_readonly("agent", &xfer::Notification::agent, "The sender.")
      .def_property_readonly("message",
                             [](const xfer::Notification& n) { return py::bytes(n.message); })
      .def(
          "__eq__", [](const xfer::Notification& a, const xfer::Notification& b) { return a == b; },
          py::is_operator())
      .def("__repr__", [](const xfer::Notification& n) {
        return "Notification(agent='" + n.agent +
               "', message=" + std::string(py::repr(py::bytes(n.message))) + ")";
      });
}

void bind_registration(py::module_& m) {
  py::class_<RegistrationBox, RegistrationPtr>(
      m, "MemoryRegistration",
      "Ranges registered with an agent; released by release(), at the end of a with "
      "block, or when dropped.")
      .def_property_readonly("regions",
                             [](RegistrationBox& r) -> py::object {
                               std::optional<xfer::DescList> d;
                               {
                                 py::gil_scoped_release g;
                                 std::lock_guard l(r.mu);
                                 if (r.reg) d = r.reg->regions();
                               }
                               if (!d) return py::none();
                               return py::cast(*d);
                             })
      .def("release",
           [](RegistrationBox& r) {
             py::gil_scoped_release g;
             std::lock_guard l(r.mu);
             r.reg.reset();
           })
      .def("__enter__", [](const RegistrationPtr& r) { return r; })
      .def("__exit__", [](RegistrationBox& r, py::args) {
        py::gil_scoped_release g;
        std::lock_guard l(r.mu);
        r.reg.reset();
      });
}

void bind_request(py::module_& m) {
  py::class_<RequestBox, RequestPtr>(
      m, "Request",
      "A READ or WRITE between this agent's memory and a peer's. wait() blocks without "
      "the GIL; `await request` in asyncio. post() starts it again once finished.")
      .def("post",
           [](RequestBox& r) {
             py::gil_scoped_release g;
             std::lock_guard l(r.mu);
             check(r.req->post());
           })
      .def_property_readonly("state",
                             [](RequestBox& r) {
                               py::gil_scoped_release g;
                               std::lock_guard l(r.mu);
                               return r.req->state();
                             })
      .def("ready",
           [](RequestBox& r) {
             py::gil_scoped_release g;
             std::lock_guard l(r.mu);
             auto s = r.req->state();
             return s == xfer::XferState::Done || s == xfer::XferState::Error;
           })
      .def_property_readonly("error",
                             [](RequestBox& r) -> py::object {
                               xfer::XferState s;
                               Error e{ErrorCode::Internal, {}};
                               {
                                 py::gil_scoped_release g;
                                 std::lock_guard l(r.mu);
                                 s = r.req->state();
                                 if (s == xfer::XferState::Error) e = r.req->error();
                               }
                               if (s != xfer::XferState::Error) return py::none();
                               return make_exception(e);
                             })
      .def(
          "wait",
          [](RequestBox& r, py::handle timeout) {
            auto ms = timeout_arg(timeout);
            Status st;
            {
              py::gil_scoped_release g;
              std::lock_guard l(r.mu);
              st = r.req->wait(ms);
            }
            check(st);
          },
          py::arg("timeout") = py::none(),
          "Waits until done (seconds; None: no limit) and raises the request's error.");
}

using AgentClass = py::class_<AgentBox, AgentPtr>;

void bind_agent_basics(AgentClass& c) {
  c.def(py::init(&make_agent), py::arg("name"), py::kw_only(), py::arg("backends") = py::none(),
        py::arg("progress_thread") = true, py::arg("peer_timeout") = 5.0,
        py::arg("add_cuda_if_gpu") = true, py::arg("max_metadata_bytes") = 64 << 20,
        py::arg("etcd_endpoints") = py::none(), py::arg("etcd_prefix") = "",
        py::arg("etcd_lease_ttl") = 10.0, py::arg("auth_key") = py::none(),
        "backends: default ['UCX', 'POSIX'] (CUDA added when a GPU is usable). "
        "etcd_endpoints ('http://host:2379'; default $KVBM_ETCD_ENDPOINTS) and etcd_prefix "
        "(default $KVBM_ETCD_PREFIX, else 'kvbm/') turn on etcd discovery; what the agent "
        "publishes there lives under a lease of etcd_lease_ttl seconds. auth_key (at least "
        "16 bytes; default $KVBM_AUTH_KEY or the file $KVBM_AUTH_KEY_FILE) authenticates "
        "the side channel and seals the metadata.")
      .def_property_readonly("name", [](const AgentBox& a) { return a.agent->name(); })
      .def_property_readonly("backends", [](const AgentBox& a) { return a.agent->backends(); })
      .def(
          "create_backend",
          [](const AgentPtr& a, const std::string& type, py::object params) {
            xfer::BackendParams p;
            if (!params.is_none()) {
              p = cast_arg<xfer::BackendParams>(params, "params", "a dict of str to str");
            }
            py::gil_scoped_release g;
            check(A(a).create_backend(type, p));
          },
          py::arg("type"), py::arg("params") = py::none())
      .def(
          "register",
          [](const AgentPtr& a, py::handle obj, py::object backend) {
            register_obj(
                a, obj,
                backend.is_none() ? "" : cast_arg<std::string>(backend, "backend", "a name"));
          },
          py::arg("obj"), py::kw_only(), py::arg("backend") = py::none(),
          "Registers a Storage or every region of a Layout; the registration lives with "
          "it. Disk files are unlinked by registration (their bytes stay).")
      .def(
          "register_memory",
          [](const AgentPtr& a, const xfer::DescList& d, py::object backend) {
            auto box = std::make_shared<RegistrationBox>();
            box->agent = a;
            std::string b =
                backend.is_none() ? "" : cast_arg<std::string>(backend, "backend", "a name");
            py::gil_scoped_release g;
            box->reg = unwrap(A(a).register_memory(d, b));
            return box;
          },
          py::arg("regions"), py::kw_only(), py::arg("backend") = py::none())
      .def("progress",
           [](const AgentPtr& a) {
             py::gil_scoped_release g;
             A(a).progress();
           })
      .def("__repr__", [](const AgentBox& a) { return "Agent('" + a.agent->name() + "')"; });
}

void bind_agent_metadata(AgentClass& c) {
  c.def(
       "metadata",
       [](const AgentPtr& a) {
         std::string md;
         {
           py::gil_scoped_release g;
           md = unwrap(A(a).local_metadata());
         }
         return py::bytes(md);
       },
       "This agent's metadata, for a peer's load_metadata().")
      .def(
          "load_metadata",
          [](const AgentPtr& a, py::handle md) {
            std::string b = bytes_arg(md, "metadata");
            py::gil_scoped_release g;
            return unwrap(A(a).load_remote_metadata(b));
          },
          py::arg("metadata"), "Loads a peer's metadata; returns its name.")
      .def(
          "invalidate",
          [](const AgentPtr& a, const std::string& peer) {
            py::gil_scoped_release g;
            check(A(a).invalidate_remote(peer));
          },
          py::arg("peer"))
      .def(
          "has_remote", [](const AgentPtr& a, const std::string& p) { return A(a).has_remote(p); },
          py::arg("peer"))
      .def(
          "listen",
          [](const AgentPtr& a, const std::string& host, int64_t port) {
            if (port < 0 || port > 65535) throw py::value_error("port must be 0..65535");
            py::gil_scoped_release g;
            return unwrap(A(a).listen(host, static_cast<uint16_t>(port)));
          },
          py::arg("host") = "127.0.0.1", py::arg("port") = 0,
          "Serves metadata and published items over TCP; returns the bound port.")
      .def(
          "fetch_metadata",
          [](const AgentPtr& a, const std::string& host, int64_t port, py::handle timeout) {
            if (port <= 0 || port > 65535) throw py::value_error("port must be 1..65535");
            auto ms = timeout_arg(timeout);
            py::gil_scoped_release g;
            return unwrap(A(a).fetch_remote_metadata(host, static_cast<uint16_t>(port), ms));
          },
          py::arg("host"), py::arg("port"), py::arg("timeout") = 5.0,
          "Fetches and loads a peer's metadata from its listener; returns its name.");
}

// etcd discovery: each call waits for etcd (without the GIL).
void bind_agent_etcd(AgentClass& c) {
  c.def(
       "publish_metadata",
       [](const AgentPtr& a) {
         py::gil_scoped_release g;
         check(A(a).publish_metadata());
       },
       "Puts this agent's metadata (and, from then on, what publish() publishes) in etcd. "
       "UnsupportedError without etcd endpoints; IoError naming them when etcd is "
       "unreachable.")
      .def(
          "withdraw_metadata",
          [](const AgentPtr& a) {
            py::gil_scoped_release g;
            check(A(a).withdraw_metadata());
          },
          "Removes what this agent published from etcd (also done when it is destroyed).")
      .def(
          "fetch_remote_metadata",
          [](const AgentPtr& a, const std::string& name) {
            py::gil_scoped_release g;
            return unwrap(A(a).fetch_remote_metadata(name));
          },
          py::arg("name"),
          "Fetches agent `name`'s metadata from etcd and loads it; returns the name. "
          "NotFoundError when etcd has none.")
      .def(
          "fetch_published",
          [](const AgentPtr& a, const std::string& name, const std::string& key) {
            std::string b;
            {
              py::gil_scoped_release g;
              b = unwrap(A(a).fetch_published(name, key));
            }
            return py::bytes(b);
          },
          py::arg("name"), py::arg("key"),
          "An item agent `name` published, from etcd. NotFoundError naming agent and key.");
}

void bind_agent_publishing(AgentClass& c) {
  c.def(
       "publish",
       [](const AgentPtr& a, const std::string& key, py::handle value) {
         if (py::isinstance<RemoteDescriptor>(value)) {
           const auto& d = value.cast<const RemoteDescriptor&>();
           py::gil_scoped_release g;
           check(publish_descriptor(A(a), key, d));
           return;
         }
         std::string b = bytes_arg(value, "value");
         py::gil_scoped_release g;
         check(A(a).publish(key, std::move(b)));
       },
       py::arg("key"), py::arg("value"),
       "Publishes bytes or a RemoteDescriptor under `key` on the side channel.")
      .def(
          "unpublish",
          [](const AgentPtr& a, const std::string& key) { check(A(a).unpublish(key)); },
          py::arg("key"))
      .def(
          "fetch",
          [](const AgentPtr& a, const std::string& host, int64_t port, const std::string& key,
             py::handle timeout) {
            if (port <= 0 || port > 65535) throw py::value_error("port must be 1..65535");
            auto ms = timeout_arg(timeout);
            std::string b;
            {
              py::gil_scoped_release g;
              b = unwrap(A(a).fetch_published(host, static_cast<uint16_t>(port), key, ms));
            }
            return py::bytes(b);
          },
          py::arg("host"), py::arg("port"), py::arg("key"), py::arg("timeout") = 5.0)
      .def(
          "fetch_descriptor",
          [](const AgentPtr& a, const std::string& host, int64_t port, const std::string& key,
             py::handle timeout, bool reload) {
            if (port <= 0 || port > 65535) throw py::value_error("port must be 1..65535");
            auto ms = timeout_arg(timeout);
            py::gil_scoped_release g;
            return unwrap(
                fetch_descriptor(A(a), host, static_cast<uint16_t>(port), key, ms,
                                 reload ? OwnerMetadata::Reload : OwnerMetadata::LoadIfUnknown));
          },
          py::arg("host"), py::arg("port"), py::arg("key"), py::arg("timeout") = 5.0, py::kw_only(),
          py::arg("reload") = false,
          "Fetches a published RemoteDescriptor and loads its owner's metadata.");
}

void bind_agent_requests(AgentClass& c) {
  c.def("request", &make_request, py::arg("op"), py::arg("local"), py::arg("remote"),
        py::arg("peer") = py::none(), py::kw_only(), py::arg("notification") = py::none(),
        py::arg("post") = true,
        "A READ or WRITE between local (Storage or DescList) and remote "
        "(RemoteDescriptor or DescList with peer=); posted unless post=False.")
      .def(
          "read",
          [](const AgentPtr& a, py::handle l, py::handle r, py::handle peer, py::handle n) {
            return make_request(a, xfer::Op::Read, l, r, peer, n, true);
          },
          py::arg("local"), py::arg("remote"), py::arg("peer") = py::none(), py::kw_only(),
          py::arg("notification") = py::none(), "Starts a READ of remote into local.")
      .def(
          "write",
          [](const AgentPtr& a, py::handle l, py::handle r, py::handle peer, py::handle n) {
            return make_request(a, xfer::Op::Write, l, r, peer, n, true);
          },
          py::arg("local"), py::arg("remote"), py::arg("peer") = py::none(), py::kw_only(),
          py::arg("notification") = py::none(), "Starts a WRITE of local into remote.")
      .def(
          "notify",
          [](const AgentPtr& a, const std::string& peer, py::handle message) {
            std::string msg = bytes_arg(message, "message");
            py::gil_scoped_release g;
            check(A(a).gen_notif(peer, msg));
          },
          py::arg("peer"), py::arg("message"))
      .def(
          "notifications",
          [](const AgentPtr& a) {
            py::gil_scoped_release g;
            std::lock_guard l(a->mu);
            std::vector<xfer::Notification> out(a->pending.begin(), a->pending.end());
            a->pending.clear();
            for (auto& n : A(a).get_notifs()) out.push_back(std::move(n));
            return out;
          },
          "Returns and clears the notifications received.")
      .def("wait_notification", &wait_notification, py::arg("timeout") = 5.0, py::kw_only(),
           py::arg("peer") = py::none(), py::arg("message") = py::none(),
           "Waits for a notification (from `peer`, equal to `message`, when given); "
           "kvbm.TimeoutError if none comes within `timeout` seconds.");
}

}  // namespace

// A prepared descriptor list (Agent::prepare_descs) and the agent that made it.
struct PreparedBox {
  AgentPtr agent;
  std::shared_ptr<const xfer::PreparedDescs> list;
  ~PreparedBox() {
    MaybeReleaseGil g;
    list.reset();
  }
};
using PreparedPtr = std::shared_ptr<PreparedBox>;

void bind_prepared(py::module_& m) {
  py::class_<PreparedBox, PreparedPtr>(
      m, "PreparedDescs",
      "Descriptors resolved once by Agent.prepare(), for requests by index "
      "(Agent.request_prepared). Stale once a region is deregistered or the peer's "
      "metadata replaced: prepare again.")
      .def_property_readonly(
          "agent", [](const PreparedBox& p) { return p.list->agent(); },
          "The agent whose memory the descriptors name.")
      .def_property_readonly("descs", [](const PreparedBox& p) { return p.list->descs(); })
      .def("__len__", [](const PreparedBox& p) { return p.list->size(); });
}

PreparedPtr prepare(const AgentPtr& a, const xfer::DescList& descs, const std::string& agent) {
  auto box = std::make_shared<PreparedBox>();
  box->agent = a;
  py::gil_scoped_release g;
  box->list = unwrap(A(a).prepare_descs(descs, agent));
  return box;
}

RequestPtr make_prepared_request(const AgentPtr& a, xfer::Op op, const PreparedPtr& local,
                                 const std::vector<uint32_t>& local_indices,
                                 const PreparedPtr& remote,
                                 const std::vector<uint32_t>& remote_indices,
                                 py::handle notification, bool post) {
  auto box = std::make_shared<RequestBox>();
  box->agent = a;
  box->keep = {local, remote};
  std::optional<std::string> notif;
  if (!notification.is_none()) notif = bytes_arg(notification, "notification");
  py::gil_scoped_release g;
  box->req = unwrap(A(a).create_request(op, *local->list, local_indices, *remote->list,
                                        remote_indices, std::move(notif)));
  if (post) check(box->req->post());
  return box;
}

void bind_agent_prepared(AgentClass& c) {
  c.def("prepare", &prepare, py::arg("descs"), py::arg("agent"),
        "Resolves a DescList once: of this agent's memory (agent = its own name) or of a "
        "loaded peer's.")
      .def("request_prepared", &make_prepared_request, py::arg("op"), py::arg("local"),
           py::arg("local_indices"), py::arg("remote"), py::arg("remote_indices"), py::kw_only(),
           py::arg("notification") = py::none(), py::arg("post") = true,
           "A READ or WRITE of local.descs[local_indices[i]] with "
           "remote.descs[remote_indices[i]]; posted unless post=False.");
}

void bind_agent(py::module_& m) {
  bind_notification(m);
  bind_registration(m);
  bind_request(m);
  bind_prepared(m);
  AgentClass c(m, "Agent",
               "A named transfer agent (NIXL's model): registers memory, exchanges metadata "
               "with peers (in memory or over its TCP side channel), READs and WRITEs their "
               "registered memory, sends and receives notifications. Thread-safe. "
               "Registrations and requests keep the agent alive, so it may be dropped "
               "before them.");
  bind_agent_basics(c);
  bind_agent_metadata(c);
  bind_agent_publishing(c);
  bind_agent_etcd(c);
  bind_agent_requests(c);
  bind_agent_prepared(c);
}

}  // namespace kvbm::python
