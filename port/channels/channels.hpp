// Channels, byte channels and buffers (PROTOCOL.md §3.11): queues that live in the port, fed by
// chan_data frames the Erlang side writes straight from the sending process, read by Python code.
//
// One table for the whole port (channels are not bound to a context: any context or thread of this
// port may read one). A channel is named by the id the Erlang side chose (the header id of its frames)
// and by its key, the ETF bytes of the Erlang reference that is its handle (how Python finds it).
//
// Locking: Table::mutex_ ("chan table lock") guards the two maps; Chan::mutex_ ("chan lock") guards
// one channel's queue, buffer and waiter lists. Order: GIL -> chan lock -> a context's mutex_
// (Context::wake). Never the GIL while a chan lock is held; the table lock is never held with another.
// Waiters never read state under a context's mutex_ except the atomic `seq`, so wake() cannot invert
// the order.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ep {

class Context;

namespace chan {

enum class Type : uint8_t { Channel = 1, Bytes = 2, Buffer = 3 };

// chan_ctl operations (PROTOCOL.md §3.11).
enum class CtlOp : uint8_t { Close = 1, Drop = 2, Consumed = 3 };

// A buffer's bytes. Replaced (never resized in place) when it grows, so a memoryview keeps the block it
// was made from alive and valid: written bytes never change.
struct Block {
  explicit Block(size_t cap);
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  char* data = nullptr;
  size_t cap = 0;
};

// The default and smallest capacity of a chunked buffer.
constexpr size_t kBufferInitial = 64 * 1024;
// Python -> Erlang bytes of a byte channel without max_size may be unconsumed this much before
// send_bytes blocks (the bound of that direction).
constexpr size_t kDefaultReverseWindow = 16u << 20;
// Consumed bytes are acknowledged (chan_consumed) once this many are unacknowledged, or a quarter of
// max_size if that is smaller, and whenever the queue becomes empty.
constexpr size_t kAckBatch = 256 * 1024;

class Chan {
 public:
  Chan(uint64_t id, Type type, uint64_t max_size, uint64_t hint, std::string key);
  const uint64_t id;
  const Type type;
  const uint64_t max_size;  // 0: unbounded (Erlang enforces it for the Erlang -> Python direction)
  const std::string key;

  std::mutex mutex;  // "chan lock": everything below except the atomics
  std::condition_variable cv;  // waiters on threads outside contexts
  // Bumped (under mutex) on every change a reader may wait for: data, EOF, drop, consumption.
  std::atomic<uint64_t> seq{0};
  bool eof = false;      // Erlang closed it (no more data), or Python closed it
  bool dropped = false;  // freed: the owner died, or the port is leaving
  // Channel / byte channel: frame payloads (16-byte header + body), oldest first. Bounded by the
  // Erlang side's max_size check (sent minus acknowledged), plus one message.
  std::deque<std::string> queue;
  size_t queued_bytes = 0;
  size_t unacked = 0;  // consumed bytes not yet reported to Erlang
  // Byte channel, Python -> Erlang: bytes sent and not yet consumed by Erlang (chan_ctl consumed).
  size_t reverse_unconsumed = 0;
  // Buffer.
  std::shared_ptr<Block> block;
  size_t write_pos = 0, read_pos = 0;
  uint64_t content_length = 0;  // 0: chunked
  bool py_closed = false;       // closed by Python (Channel/ByteChannel.close())
  // Waiters: contexts blocked in Context::wait, and one-shot eventfds of async waiters.
  std::vector<Context*> ctx_waiters;
  std::vector<int> fd_waiters;

  // Under mutex: bump seq and wake every waiter (contexts, threads, eventfds; the fds are one-shot).
  void notify_locked();
};

class Table {
 public:
  // Loop thread (frames from Erlang). No GIL.
  void open(uint64_t id, Type type, uint64_t max_size, uint64_t hint, std::string key);
  void data(uint64_t id, std::string payload);
  void ctl(uint64_t id, CtlOp op, uint64_t arg);

  std::shared_ptr<Chan> find(uint64_t id);
  std::shared_ptr<Chan> find_key(std::string_view key);
  void erase(uint64_t id);
  size_t size();
  // Buffers alive (read without the lock: the reference decode hook skips its lookup when 0).
  size_t buffers() const { return buffers_.load(std::memory_order_relaxed); }

 private:
  std::atomic<size_t> buffers_{0};
  std::mutex mutex_;  // "chan table lock"
  std::unordered_map<uint64_t, std::shared_ptr<Chan>> by_id_;
  std::unordered_map<std::string, uint64_t> by_key_;
};

// The port's one table.
Table& table();

// Body helpers (no GIL): a body that is one binary, in either codec (ETF BINARY_EXT, msgpack bin or
// str). False if it is anything else.
bool parse_binary_body(bool etf, std::string_view body, std::string_view& out);

}  // namespace chan
}  // namespace ep
