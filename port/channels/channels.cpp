#include "channels.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "context.hpp"

namespace ep::chan {

Block::Block(size_t c) : data(static_cast<char*>(std::malloc(c ? c : 1))), cap(c) {
  if (!data) throw std::bad_alloc();
}

Block::~Block() { std::free(data); }

Chan::Chan(uint64_t i, Type t, uint64_t max, uint64_t hint, std::string k)
    : id(i), type(t), max_size(max), key(std::move(k)) {
  if (type == Type::Buffer) {
    content_length = hint;
    // A known length is allocated at once (the docs' pre-allocation); a chunked buffer starts at
    // 64 KiB and doubles. Capped so a bogus hint cannot reserve more than the frames could carry.
    size_t cap = hint ? static_cast<size_t>(std::min<uint64_t>(hint, uint64_t{1} << 30)) : kBufferInitial;
    block = std::make_shared<Block>(cap);
  }
}

void Chan::notify_locked() {
  seq.fetch_add(1, std::memory_order_acq_rel);
  // Under this chan lock a registered context is inside Context::wait (it unregisters under the same
  // lock before it returns), so the pointer is live.
  for (Context* c : ctx_waiters) c->wake();
  cv.notify_all();
  for (int fd : fd_waiters) {
    uint64_t one = 1;
    ssize_t w = ::write(fd, &one, sizeof one);
    (void)w;  // an eventfd write only fails on overflow, which a one-shot waiter never reaches
  }
  fd_waiters.clear();  // one-shot: the waiter closes its fd (unwait)
}

Table& table() {
  static Table t;  // C++ state only (no Python object): one per port process
  return t;
}

void Table::open(uint64_t id, Type type, uint64_t max_size, uint64_t hint, std::string key) {
  auto c = std::make_shared<Chan>(id, type, max_size, hint, key);
  std::lock_guard<std::mutex> lock(mutex_);
  if (type == Type::Buffer) buffers_.fetch_add(1, std::memory_order_relaxed);
  by_key_[std::move(key)] = id;
  by_id_[id] = std::move(c);
}

void Table::data(uint64_t id, std::string payload) {
  std::shared_ptr<Chan> c = find(id);
  if (!c) return;  // dropped or closed by Python meanwhile: the Erlang side answers {error, closed}
  std::lock_guard<std::mutex> lock(c->mutex);
  if (c->eof || c->dropped) return;
  if (c->type == Type::Buffer) {
    std::string_view body = std::string_view(payload).substr(16);
    size_t need = c->write_pos + body.size();
    if (need > c->block->cap) {
      // A new block: memoryviews of the old one keep it (their bytes stay valid, they are written).
      size_t cap = c->block->cap;
      while (cap < need) cap *= 2;
      auto grown = std::make_shared<Block>(cap);
      std::memcpy(grown->data, c->block->data, c->write_pos);
      c->block = std::move(grown);
    }
    std::memcpy(c->block->data + c->write_pos, body.data(), body.size());
    c->write_pos = need;
  } else {
    c->queued_bytes += payload.size() - 16;
    c->queue.push_back(std::move(payload));
  }
  c->notify_locked();
}

void Table::ctl(uint64_t id, CtlOp op, uint64_t arg) {
  std::shared_ptr<Chan> c = find(id);
  if (!c) return;
  {
    std::lock_guard<std::mutex> lock(c->mutex);
    switch (op) {
      case CtlOp::Close:
        c->eof = true;
        break;
      case CtlOp::Drop:
        c->dropped = true;
        c->eof = true;
        c->queue.clear();
        c->queued_bytes = 0;
        // The block goes when the last memoryview of it is released.
        c->block.reset();
        break;
      case CtlOp::Consumed:
        c->reverse_unconsumed -= std::min<uint64_t>(arg, c->reverse_unconsumed);
        break;
    }
    c->notify_locked();
  }
  if (op == CtlOp::Drop) erase(id);
}

std::shared_ptr<Chan> Table::find(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<Chan> Table::find_key(std::string_view key) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto k = by_key_.find(std::string(key));
  if (k == by_key_.end()) return nullptr;
  auto it = by_id_.find(k->second);
  return it == by_id_.end() ? nullptr : it->second;
}

void Table::erase(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  if (it->second->type == Type::Buffer) buffers_.fetch_sub(1, std::memory_order_relaxed);
  by_key_.erase(it->second->key);
  by_id_.erase(it);
}

size_t Table::size() {
  std::lock_guard<std::mutex> lock(mutex_);
  return by_id_.size();
}

bool parse_binary_body(bool etf, std::string_view b, std::string_view& out) {
  auto c = [&](size_t i) { return static_cast<unsigned char>(b[i]); };
  auto be = [&](size_t at, size_t n) {
    size_t x = 0;
    for (size_t i = 0; i < n; ++i) x = (x << 8) | c(at + i);
    return x;
  };
  size_t hdr = 0, len = 0;
  if (etf) {
    if (b.size() < 6 || c(0) != 131 || c(1) != 109) return false;
    hdr = 6;
    len = be(2, 4);
  } else {
    if (b.empty()) return false;
    unsigned char t = c(0);
    if (t >= 0xa0 && t <= 0xbf) {
      hdr = 1;
      len = t & 0x1f;
    } else if ((t == 0xc4 || t == 0xd9) && b.size() >= 2) {
      hdr = 2;
      len = be(1, 1);
    } else if ((t == 0xc5 || t == 0xda) && b.size() >= 3) {
      hdr = 3;
      len = be(1, 2);
    } else if ((t == 0xc6 || t == 0xdb) && b.size() >= 5) {
      hdr = 5;
      len = be(1, 4);
    } else {
      return false;
    }
  }
  if (b.size() - hdr != len) return false;
  out = b.substr(hdr);
  return true;
}

}  // namespace ep::chan
