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
  OutputAck = 12,
  ContextInit = 13,
  Drain = 14,
  RefOp = 15,
  // opsa: logging and tracing (PROTOCOL.md §3.14)
  OpsConfig = 28,
  OpsAck = 29,
  Record = 25,     // opsb, PROTOCOL.md §3.13
  Interrupt = 26,  // opsb, PROTOCOL.md §3.13
  MemoryLimit = 27,  // opsb, PROTOCOL.md §3.13
  // chan: channels, byte channels, buffers (PROTOCOL.md §3.11)
  ChanOpen = 20,
  ChanData = 21,
  ChanCtl = 22,
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
  Requeue = 75,
  Span = 88,  // opsa (§3.14)
  Schedule = 94,  // §3.17
  // Internal, never on the wire (dispatch refuses it as unknown): a schedule_inline continuation
  // queued on its context (runtime/schedule.cpp).
  Continue = 255,
  // chan (PROTOCOL.md §3.11)
  ChanConsumed = 80,
  ChanClosed = 81,
  ChanBytes = 82,
};

// Header flag bits (PROTOCOL.md §1.1). Any other bit set is a protocol error.
constexpr uint8_t kFlagNested = 0x01;

constexpr size_t kHeaderSize = 16;
constexpr size_t kDefaultMaxFrame = size_t{1} << 30;
// The {packet,4} length field counts at most 4 GiB - 1 bytes.
constexpr size_t kMaxOutFrame = 0xFFFFFFFFu;

struct Header {
  uint8_t kind = 0;
  uint8_t flags = 0;
  uint16_t reserved = 0;
  uint32_t ctx = 0;
  uint64_t id = 0;
};

// Big-endian unsigned integers of n bytes (n <= 8): the header fields, the {packet,4} length, the
// shared-memory descriptor (§1.1, §3.12).
inline uint64_t be(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline void put_be(std::string& out, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Reads a header from the first 16 bytes of a frame payload (caller checks the size).
Header parse_header(const char* p);

// Starts an outgoing frame in `out`: 4 length bytes (patched by finish_frame) and the header.
// Returns the offset of the frame start, for finish_frame.
size_t begin_frame(std::string& out, const Header& h);
void finish_frame(std::string& out, size_t start);

// Splits a byte stream into frame payloads (header + body, without the length prefix).
//
// feed() may be given chunks of any size; each complete payload is handed to on_frame as an rvalue
// std::string. A frame whose length is over max_frame is not buffered: its first 16 bytes (the header,
// or fewer if the frame is that short) are kept, the rest is skipped, and on_oversized(head, length)
// is called once the whole frame has gone by. The length prefix is trustworthy ({packet,4} from the
// VM), so the stream stays in step and the port can refuse that one request and go on.
class FrameReader {
 public:
  explicit FrameReader(size_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}

  template <class OnFrame, class OnOversized>
  void feed(const char* data, size_t n, OnFrame&& on_frame, OnOversized&& on_oversized) {
    while (n > 0) {
      if (!have_len_) {
        size_t take = std::min(n, size_t{4} - len_bytes_);
        for (size_t i = 0; i < take; ++i) len_buf_[len_bytes_ + i] = static_cast<unsigned char>(data[i]);
        len_bytes_ += take;
        data += take;
        n -= take;
        if (len_bytes_ < 4) return;
        want_ = (size_t{len_buf_[0]} << 24) | (size_t{len_buf_[1]} << 16) | (size_t{len_buf_[2]} << 8) |
                size_t{len_buf_[3]};
        have_len_ = true;
        skipping_ = want_ > max_frame_;
        seen_ = 0;
        cur_.clear();
        if (!skipping_) cur_.reserve(want_);
      }
      if (skipping_) {
        size_t take = std::min(n, want_ - seen_);
        if (cur_.size() < kHeaderSize) cur_.append(data, std::min(take, kHeaderSize - cur_.size()));
        seen_ += take;
        data += take;
        n -= take;
        if (seen_ == want_) {
          have_len_ = false;
          len_bytes_ = 0;
          on_oversized(std::string_view(cur_), want_);
          cur_ = std::string();
        }
        continue;
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
  }
  size_t max_frame() const { return max_frame_; }

 private:
  size_t max_frame_;
  unsigned char len_buf_[4] = {0, 0, 0, 0};
  size_t len_bytes_ = 0;
  bool have_len_ = false;
  bool skipping_ = false;
  size_t want_ = 0;
  size_t seen_ = 0;  // bytes of an oversized frame gone by
  std::string cur_;
};

}  // namespace ep
