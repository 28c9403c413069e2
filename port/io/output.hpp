// The protocol output: whole frames written to the private descriptor that was stdout.
//
// Any thread may write; a mutex keeps frames whole. Writes are blocking (the descriptor is not in the
// libuv loop), so a reply goes out from the context thread that produced it, with no hand-off.
#pragma once

#include <mutex>
#include <string>

namespace ep {

class ShmDir;

class Output {
 public:
  explicit Output(int fd) : fd_(fd) {}
  // Writes complete frames (one or several back to back). If the VM has gone (EPIPE or any write
  // error) there is nobody left to serve: the process exits with status 0.
  void write(const std::string& frames);
  // In a forked child (after the protocol descriptors were closed there): every later write ends
  // the child as a write error would, rather than reach a descriptor that reuses the number.
  void forget_fd() { fd_ = -1; }
  // bulk (PROTOCOL.md §3.12): big reply bodies go through shared memory instead (set before any write).
  void set_shm(ShmDir* shm) { shm_ = shm; }

 private:
  void write_raw(const char* p, size_t left);
  void record_out(const std::string& frames);  // under mutex_
  int fd_;
  ShmDir* shm_ = nullptr;
  std::mutex mutex_;
};

}  // namespace ep
