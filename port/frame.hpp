// Frames on the wire: {packet,4} length prefix, a 16-byte header, a codec body (PROTOCOL.md §1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ep {

enum class Kind : uint8_t {
  // Erlang -> port
  Call = 1,
  Eval = 2,
  Exec = 3,
  Cast = 4,
  Cancel = 5,
  CallbackReply = 6,
  ContextCreate = 7,
  ContextDestroy = 8,
  EnvDrop = 9,
  Stats = 10,
  StreamNext = 11,
  // port -> Erlang
  Hello = 64,
  Result = 65,
  Error = 66,
  Callback = 67,
  Send = 68,
  Output = 69,
  ProtocolError = 70,
  EnvCreated = 71,
  StreamChunk = 72,
  StreamEnd = 73,
  Log = 74,
};

constexpr size_t kHeaderSize = 16;
constexpr size_t kDefaultMaxFrame = size_t{1} << 30;

struct Header {
  uint8_t kind = 0;
  uint8_t flags = 0;
  uint16_t reserved = 0;
  uint32_t ctx = 0;
  uint64_t id = 0;
};

// Reads a header from the first 16 bytes of a frame payload (caller checks the size).
Header parse_header(const char* p);

// Starts an outgoing frame in `out`: 4 length bytes (patched by finish_frame) and the header.
// Returns the offset of the frame start, for finish_frame.
size_t begin_frame(std::string& out, const Header& h);
void finish_frame(std::string& out, size_t start);

// Splits a byte stream into frame payloads (header + body, without the length prefix).
//
// feed() may be given chunks of any size; each complete payload is handed to the callback as an
// rvalue std::string. A length over max_frame makes feed() return Oversized: the stream cannot be
// resynchronised after that, so the caller reports it and stops.
class FrameReader {
 public:
  enum class Status { Ok, Oversized };
  explicit FrameReader(size_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}

  template <class OnFrame>
  Status feed(const char* data, size_t n, OnFrame&& on_frame) {
    while (n > 0) {
      if (!have_len_) {
        size_t take = std::min(n, size_t{4} - len_bytes_);
        for (size_t i = 0; i < take; ++i) len_buf_[len_bytes_ + i] = static_cast<unsigned char>(data[i]);
        len_bytes_ += take;
        data += take;
        n -= take;
        if (len_bytes_ < 4) return Status::Ok;
        want_ = (size_t{len_buf_[0]} << 24) | (size_t{len_buf_[1]} << 16) | (size_t{len_buf_[2]} << 8) |
                size_t{len_buf_[3]};
        if (want_ > max_frame_) {
          oversized_len_ = want_;
          return Status::Oversized;
        }
        have_len_ = true;
        cur_.clear();
        cur_.reserve(want_);
      }
      size_t take = std::min(n, want_ - cur_.size());
      cur_.append(data, take);
      data += take;
      n -= take;
      if (cur_.size() == want_) {
        have_len_ = false;
        len_bytes_ = 0;
        on_frame(std::move(cur_));
        cur_ = std::string();
      }
    }
    return Status::Ok;
  }
  size_t oversized_len() const { return oversized_len_; }

 private:
  size_t max_frame_;
  unsigned char len_buf_[4] = {0, 0, 0, 0};
  size_t len_bytes_ = 0;
  bool have_len_ = false;
  size_t want_ = 0;
  size_t oversized_len_ = 0;
  std::string cur_;
};

}  // namespace ep
