#include "output.hpp"

#include <cerrno>
#include <unistd.h>

#include "recorder.hpp"

namespace ep {

void Output::write(const std::string& frames) {
  if (fd_ < 0) _exit(0);  // a forked child: nobody to write to (checked before the lock, which the
                          // forking thread's parent may have held at fork time)
  std::lock_guard<std::mutex> lock(mutex_);
  recorder().frames_out(frames);  // under the lock: the recording keeps the pipe's order (opsb)
  const char* p = frames.data();
  size_t left = frames.size();
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

}  // namespace ep
