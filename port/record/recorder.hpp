// The live recorder: every frame the port reads and writes, with a timestamp, appended to a file
// (protocol/RECORDING.md). Turned on at start-up (--record PATH [--record-max BYTES]) or at run time
// by a `record` frame (PROTOCOL.md §3.13).
//
// Durability: each record is one write(2) (header and payload together, writev) on an O_APPEND
// descriptor with no user-space buffer, made before the frame is dispatched (input) or written to the
// pipe (output). A port that crashes leaves every record it finished in the kernel, so the file reads
// up to the crash; a power loss may lose the tail (no fsync). Bounded: past max_bytes one `T` record is
// written and nothing more.
//
// Threads: any thread records (the loop thread its input, every writer its output, under Output's
// mutex); mutex_ guards the descriptor and the byte count; active_ lets the hot path skip the lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "record_format.hpp"

namespace ep {

class Recorder {
 public:
  // Main thread, before anything records: the port's own command line, for the `A` record.
  void set_args(std::vector<std::string> args) { args_ = std::move(args); }
  // Starts a recording to `path` (truncated if it exists); stops the one running first. False with
  // `err` if the file cannot be opened. max_bytes 0: no cap.
  bool start(const std::string& path, uint64_t max_bytes, int codec, std::string& err);
  // Ends the recording with an `X` record (reason 0 input EOF, 1 stopped). No-op if none runs.
  void stop(uint32_t reason);
  bool active() const { return active_.load(std::memory_order_acquire); }
  // One frame payload (header + body) read from Erlang.
  void frame_in(std::string_view payload) {
    if (active()) record(rec::Type::In, payload);
  }
  // Frames about to be written to Erlang: length-prefixed, back to back (Output::write's argument).
  void frames_out(std::string_view wire);

 private:
  void record(rec::Type type, std::string_view payload);
  uint64_t now_ns() const;

  std::vector<std::string> args_;
  std::mutex mutex_;
  int fd_ = -1;              // under mutex_
  uint64_t written_ = 0;     // under mutex_
  uint64_t max_bytes_ = 0;   // under mutex_
  uint64_t start_mono_ = 0;  // under mutex_
  std::atomic<bool> active_{false};
};

// The port's one recorder (C++ state only, no Python objects).
Recorder& recorder();

}  // namespace ep
