// Sends the chunked staging protocol's messages (staging_wire.h), the initiator's chunk
// requests and polls and the target's replies alike: one active message each, whose
// header (and error text, and the staging buffer its body is read from) live until UCX is
// done with them; and receives a rendezvous message's bytes into a staging buffer.
//
// Thread safety: with the lock that serializes the worker held.
#pragma once

#include <ucp/api/ucp.h>

#include <functional>
#include <string>

#include "xfer/ucx_common/staging_owed.h"
#include "xfer/ucx_common/staging_poll.h"
#include "xfer/ucx_common/staging_pool.h"
#include "xfer/ucx_common/staging_wire.h"

namespace kvbm::xfer::detail::staging {

struct Message {
  std::string header;        // an encoded ChunkRequest, ChunkPoll or ChunkReply
  std::string error_text;    // when set, the body sent instead of the bytes given
  Buffer keep{nullptr, {}};  // a staging buffer the body is read from: back to its pool once sent
  std::function<void(ucs_status_t)> done;  // runs once sent (or failed), with the lock held
};

// A request's message: its encoded header.
Message request(const ChunkRequest& h);
// A poll's message: its encoded header.
Message poll(const ChunkPoll& h);
// A reply's message: an error's text cut to kMaxErrorBytes.
Message reply(const ChunkReply& h, std::string error_text = {});

// A UCX operation on a chunk's bytes, as its callback leaves it: pending until it ends,
// then its status.
struct Pending {
  bool pending = false;
  ucs_status_t status = UCS_OK;
};

// Receives the `len` bytes of a rendezvous message (its data descriptor `desc`) into
// `buf`; *op is pending until they are in (or failed) and must stay put until then.
void receive(ucp_worker_h worker, void* desc, void* buf, size_t len, Pending* op);

// Sends `m` as active message `id` with `body` (ignored where m.error_text is set) and
// `flags` (UCP_AM_SEND_FLAG_*); m.done runs once UCX is done with it.
void send(ucp_ep_h ep, unsigned id, Message m, const void* body, size_t len, uint32_t flags);

// The initiator: sends `token`'s poll on `ep` as active message `poll_id`, asking for a
// reply endpoint. One that fails to go is reported to `polls`, so the next may go at once
// (a failed peer's transfers end by its failure).
void send_poll(Polls& polls, ucp_ep_h ep, uint64_t token, unsigned poll_id);

// The target, inside the callback of `token`'s poll (where `ep`, its reply endpoint, is
// valid): sends every reply `owed` to it as active message `reply_id` with `flags`, then
// the poll's end, which says how many went.
void answer_poll(OwedReplies& owed, ucp_ep_h ep, uint64_t token, unsigned reply_id, uint32_t flags);

}  // namespace kvbm::xfer::detail::staging
