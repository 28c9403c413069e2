// Streams (PROTOCOL.md §3.9): a call or eval with Opts #{stream => Credit} whose result is an
// iterator. The iterator is kept like an object reference (Envs, owned by {Env, context}); this table
// maps the stream (context serial, the starting request's id) to it. Each pull (the start itself, then
// every stream_next) sends up to its credit of items as stream_chunk frames and returns, so the context
// is free for other requests between pulls.
//
// Bounds: one entry per open stream; an entry goes when its stream ends (exhaustion, error, close) or
// its context is destroyed. Items in flight are bounded by the credit the Erlang side grants.
// Locking: the table is guarded by its own mutex (the streams mutex), taken after the GIL and never held
// across a call into Python.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace ep {

class StreamTable {
 public:
  struct Entry {
    std::string key;      // the Env key the iterator is kept under (Envs)
    uint64_t obj_id = 0;  // its ObjId there
  };
  void add(uint64_t serial, uint64_t id, Entry e) {
    std::lock_guard<std::mutex> lock(mutex_);
    map_[{serial, id}] = std::move(e);
  }
  bool find(uint64_t serial, uint64_t id, Entry& e) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = map_.find({serial, id});
    if (it == map_.end()) return false;
    e = it->second;
    return true;
  }
  void remove(uint64_t serial, uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    map_.erase({serial, id});
  }
  void drop_context(uint64_t serial) {
    std::lock_guard<std::mutex> lock(mutex_);
    map_.erase(map_.lower_bound({serial, 0}), map_.upper_bound({serial, UINT64_MAX}));
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return map_.size();
  }

 private:
  std::mutex mutex_;  // the streams mutex
  std::map<std::pair<uint64_t, uint64_t>, Entry> map_;
};

}  // namespace ep
