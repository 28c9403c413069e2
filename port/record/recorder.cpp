#include "recorder.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ep {

namespace {
uint64_t clock_ns(clockid_t c) {
  timespec ts{};
  clock_gettime(c, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Writes all of it (retrying short writes and EINTR); false on an error.
bool write_all(int fd, const std::string& head, std::string_view body) {
  iovec iov[2] = {{const_cast<char*>(head.data()), head.size()}, {const_cast<char*>(body.data()), body.size()}};
  int n = body.empty() ? 1 : 2;
  iovec* v = iov;
  while (n > 0) {
    ssize_t w = ::writev(fd, v, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    size_t left = static_cast<size_t>(w);
    while (n > 0 && left >= v->iov_len) {
      left -= v->iov_len;
      ++v;
      --n;
    }
    if (n > 0) {
      v->iov_base = static_cast<char*>(v->iov_base) + left;
      v->iov_len -= left;
    }
  }
  return true;
}
}  // namespace

Recorder& recorder() {
  static Recorder r;
  return r;
}

uint64_t Recorder::now_ns() const { return clock_ns(CLOCK_MONOTONIC) - start_mono_; }

bool Recorder::start(const std::string& path, uint64_t max_bytes, int codec, std::string& err) {
  stop(1);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    err = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  rec::FileHeader fh;
  fh.codec = static_cast<uint8_t>(codec);
  fh.start_unix_ns = clock_ns(CLOCK_REALTIME);
  fh.max_bytes = max_bytes;
  std::string head = rec::encode_file_header(fh);
  std::string args;
  for (const auto& a : args_) args += a + '\0';
  std::string arg_head = rec::encode_record_header(rec::Type::Args, static_cast<uint32_t>(args.size()), 0);
  if (!write_all(fd, head, {}) || !write_all(fd, arg_head, args)) {
    err = "cannot write " + path + ": " + std::strerror(errno);
    ::close(fd);
    return false;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  fd_ = fd;
  written_ = head.size() + arg_head.size() + args.size();
  max_bytes_ = max_bytes;
  start_mono_ = clock_ns(CLOCK_MONOTONIC);
  active_.store(true, std::memory_order_release);
  return true;
}

void Recorder::stop(uint32_t reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (fd_ < 0) return;
  std::string body;
  for (int i = 3; i >= 0; --i) body.push_back(static_cast<char>((reason >> (8 * i)) & 0xff));
  (void)write_all(fd_, rec::encode_record_header(rec::Type::End, 4, now_ns()), body);
  ::close(fd_);
  fd_ = -1;
  active_.store(false, std::memory_order_release);
}

void Recorder::record(rec::Type type, std::string_view payload) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (fd_ < 0) return;
  uint64_t size = rec::kRecordHeaderSize + payload.size();
  if (max_bytes_ && written_ + size > max_bytes_) {
    // The cap: say so once and stop (the file then ends with T, never with a cut record).
    (void)write_all(fd_, rec::encode_record_header(rec::Type::Truncated, 0, now_ns()), {});
    ::close(fd_);
    fd_ = -1;
    active_.store(false, std::memory_order_release);
    return;
  }
  if (!write_all(fd_, rec::encode_record_header(type, static_cast<uint32_t>(payload.size()), now_ns()), payload)) {
    // A full disk or a closed file must not take the port down: recording just ends.
    ::close(fd_);
    fd_ = -1;
    active_.store(false, std::memory_order_release);
    return;
  }
  written_ += size;
}

void Recorder::frames_out(std::string_view wire) {
  if (!active()) return;
  // Bounded by the buffer: each step consumes one length-prefixed frame.
  while (wire.size() >= 4) {
    size_t len = (size_t{static_cast<unsigned char>(wire[0])} << 24) | (size_t{static_cast<unsigned char>(wire[1])} << 16) |
                 (size_t{static_cast<unsigned char>(wire[2])} << 8) | size_t{static_cast<unsigned char>(wire[3])};
    if (wire.size() - 4 < len) break;
    record(rec::Type::Out, wire.substr(4, len));
    wire.remove_prefix(4 + len);
  }
}

}  // namespace ep
