// The UCX backend's RMA over active messages, for peers that UCX 1.13 would give only
// emulated RMA. Its ucp_put/ucp_get are real one-sided operations only over a transport
// whose interface can put and get (UCX selects RMA lanes among those with put_short,
// put_bcopy and get_bcopy) and that reaches memory the application registered itself:
// among host transports rc_verbs, rc_mlx5 and dc_mlx5 (RDMA), xpmem on one machine, and
// self (this worker). Everywhere else (TCP; UD; shared memory through posix, sysv, cma or
// knem, whose keys for memory UCX did not allocate carry no mapping) UCX emulates each put
// and get over its own active messages, copying through bounce buffers, one message at a
// time. UCX's active messages themselves are fast there: large ones go by rendezvous,
// the receiver pulling the bytes zero-copy (CMA on one host, zero-copy sends over TCP).
// So the backend's own protocol rides on them (wire: am_rma_wire.h):
//
//   WRITE  initiator sends {id, addr, len} + the bytes; the target checks that the range
//          lies inside memory it registered (never writes outside it: an error reply
//          names the reason), receives the bytes in place (rendezvous data straight into
//          the target address, eager data by one copy), then acks the id.
//   READ   initiator sends {id, addr, len}; the target checks the range and replies with
//          the bytes, which the initiator receives straight into its destination (a
//          reply is taken only for an id it waits for, of the length it asked for; a
//          reply for an unknown id is dropped unwritten).
//
// A request succeeds only when every operation's reply arrived (and every send it made
// completed); an error reply, a failed endpoint or a closed connection fails it, naming
// the peer. Notifications go after that, as on the native path, so they follow the data.
//
// Choice (the "rma" parameter, KVBM_UCX_RMA): "native" (ucp_put/get always), "am" (this
// protocol with every other agent), or "auto" (the default): this protocol unless both
// worker addresses list a transport from the native list above, or the peer is this very
// agent.
//
// Thread safety: every member runs with the backend's lock held (it serializes the worker).
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"
#include "xfer/backends/ucx/am_rma_wire.h"
#include "xfer/backends/ucx/peer_check.h"

namespace kvbm::xfer::detail::ucx {

class UcxBackend;
struct UcxPeer;
struct PostState;

enum class RmaMode { Auto, Native, Am };
// "auto", "native" or "am"; InvalidArgument naming the value otherwise.
Result<RmaMode> parse_rma_mode(std::string_view value);

// Whether UCX gives ucp_put/get real RMA to the worker of `peer_address` (the rule above).
// An address that does not walk here says nothing: then native, as before this protocol.
bool native_rma_reaches(std::string_view peer_address, const UcxWireShape& ours);

// One contiguous piece of a request: local bytes and the peer's address.
struct AmSpan {
  char* local;
  uint64_t remote;
  size_t len;
};

class AmRma {
 public:
  explicit AmRma(UcxBackend& backend) : backend_(backend) {}
  AmRma(const AmRma&) = delete;
  AmRma& operator=(const AmRma&) = delete;

  // --- target side: the memory peers may reach
  void serve(uint64_t addr, uint64_t len);
  // Stops serving [addr, addr + len): new requests for it are refused at once. True once
  // no operation of a peer reads or writes it any more (call again after progress until
  // then); the caller may unmap the memory only after true.
  bool unserve(uint64_t addr, uint64_t len);

  // --- initiator side
  // Sends one request per span to `peer`. Each adds to c->ops_pending what it leaves to
  // complete (the reply, and a send still in flight), calling backend op_done() as each
  // ends; a send that fails sets c->ops_status and stops the loop.
  void post(Op op, UcxPeer& peer, PostState* c, const std::vector<AmSpan>& spans);
  // The peer's connection is closing: its operations that wait for a reply fail now (UCX
  // ends their sends itself).
  void fail_peer(const UcxPeer& peer);
  // A request destroyed in flight: its operations still waiting for a reply stop waiting,
  // so that a late reply finds no id and writes nothing.
  void forget(PostState* c);
  // The worker was destroyed: whatever it would have called back (our sends, replies
  // and receives, peers' operations on our regions) ends now, as a reset connection.
  void worker_gone();

  // Active-message handlers (arg: this object).
  static ucs_status_t on_request(void* arg, const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t on_reply(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param);

 private:
  // A served region: refused to new requests once `gone`, and kept until `busy`, its
  // operations in flight, is 0.
  struct Served {
    uint64_t len = 0;
    size_t busy = 0;
    bool gone = false;
  };
  enum class Wait : uint8_t { Reply, Receiving, Resolved };
  // One operation of ours. Slots are reused (the id's top half counts the reuses) but
  // never moved: UCX's callbacks carry a slot's address, and UCX reads `header` until the
  // send completes.
  struct OpSlot {
    AmRma* owner = nullptr;
    uint32_t index = 0;  // in ops_
    uint32_t gen = 1;
    bool used = false;
    bool sending = false;  // our request's send is in flight
    Wait wait = Wait::Resolved;
    Op op = Op::Read;
    PostState* c = nullptr;
    char* local = nullptr;
    uint64_t remote = 0;
    size_t len = 0;
    char header[kAmRmaHeaderBytes];
  };
  // One reply of ours as a target, or a WRITE's bytes being received.
  struct ReplySlot {
    AmRma* owner = nullptr;
    bool used = false;
    Served* region = nullptr;  // busy while the bytes move
    ucp_ep_h ep = nullptr;     // where the ack goes (a WRITE being received)
    uint64_t id = 0;
    std::string text;  // an error reply's body
    char header[kAmRmaHeaderBytes];
  };

  // Target side.
  Served* find(uint64_t addr, uint64_t len);
  void handle_request(const AmRmaRequest& rq, void* data, bool rndv, ucp_ep_h ep);
  void ack_write(ReplySlot& s, ucs_status_t status);  // a WRITE's bytes arrived, or not
  void refuse(ucp_ep_h ep, uint64_t id, ErrorCode code, std::string text);
  // Sends the reply whose header is in `s` (a region in `s` stays busy until it is sent).
  void send(ReplySlot& s, ucp_ep_h ep, const void* body, size_t len);
  void reply_done(ReplySlot& s, ucs_status_t status);
  static void on_reply_sent(void* request, ucs_status_t status, void* user);
  static void on_write_received(void* request, ucs_status_t status, size_t length, void* user);
  ReplySlot& new_reply_slot();
  void free_reply_slot(ReplySlot& s);

  // Initiator side.
  OpSlot& new_op_slot();
  static uint64_t op_id(const OpSlot& s);
  OpSlot* op_of(uint64_t id);
  void handle_reply(OpSlot& s, const AmRmaReply& h, void* data, size_t length, bool rndv);
  void received(OpSlot& s, ucs_status_t status);  // a READ's rendezvous bytes arrived, or not
  // The operation's wait for its reply ends with `status` (and, on failure, `e`, kept if
  // it is the request's first).
  void resolve(OpSlot& s, ucs_status_t status, std::optional<Error> e = std::nullopt);
  void release_if_done(OpSlot& s);  // back to the free list once nothing refers to it
  static void on_request_sent(void* request, ucs_status_t status, void* user);
  static void on_read_received(void* request, ucs_status_t status, size_t length, void* user);

  UcxBackend& backend_;
  std::multimap<uint64_t, Served> served_;  // by start address
  uint64_t longest_served_ = 0;             // bounds the search for a containing region
  std::deque<OpSlot> ops_;
  std::vector<uint32_t> free_ops_;
  std::deque<ReplySlot> replies_;
  std::vector<ReplySlot*> free_replies_;
};

}  // namespace kvbm::xfer::detail::ucx
