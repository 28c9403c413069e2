#include "output.hpp"

#include <cerrno>
#include <unistd.h>

#include <vector>

#include "recorder.hpp"
#include "shm.hpp"

namespace ep {

void Output::write_raw(const char* p, size_t left) {
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      _exit(0);  // the reading end is gone: the VM closed the port or died
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void Output::record_out(const std::string& frames) {
  if (!recorder().active()) return;
  // A frame already in a region (a bytes result written straight there, bulk.cpp) is recorded with
  // its body inline too: a recording never names a region (PROTOCOL.md §3.12, record and replay).
  std::string inlined;
  if (shm_ && shm_->inline_out(frames, inlined)) recorder().frames_out(inlined);
  else recorder().frames_out(frames);
}

void Output::write(const std::string& frames) {
  if (fd_ < 0) _exit(0);  // a forked child: nobody to write to (checked before the lock, which the
                          // forking thread's parent may have held at fork time)
  if (shm_) {
    // bulk: a big body is copied into a shared-memory region (outside the lock) and only its
    // descriptor goes down the pipe.
    std::string scratch;
    std::vector<ShmDir::Piece> pieces;
    if (shm_->divert(frames, scratch, pieces)) {
      std::lock_guard<std::mutex> lock(mutex_);
      // The recording keeps the frames with their bodies inline (flag clear), so that a replay,
      // which has no regions, can send them down a pipe (opsb, PROTOCOL.md §3.12/§3.13).
      record_out(frames);
      for (const auto& piece : pieces) write_raw(piece.p, piece.n);
      return;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  record_out(frames);  // under the lock: the recording keeps the pipe's order (opsb)
  write_raw(frames.data(), frames.size());
}

}  // namespace ep
