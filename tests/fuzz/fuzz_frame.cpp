// libFuzzer harness: the frame reader (port/io/frame.hpp). The input is fed in chunks whose sizes
// come from the input itself, with a small max_frame so that the oversized path runs too. Checks that
// the reader accounts for every byte: each frame it hands out or skips took its 4-byte length plus
// the length it announced, and none was longer than allowed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "frame.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t max_frame = 16 + (data[0] % 64);
  const char* p = reinterpret_cast<const char*>(data + 1);
  size_t n = size - 1;
  ep::FrameReader reader(max_frame);
  size_t accounted = 0;
  auto on_frame = [&](std::string&& payload) {
    if (payload.size() > max_frame) std::abort();
    if (payload.size() >= ep::kHeaderSize) (void)ep::parse_header(payload.data());
    accounted += 4 + payload.size();
  };
  auto on_oversized = [&](std::string_view head, size_t length) {
    if (length <= max_frame || head.size() > ep::kHeaderSize || head.size() > length) std::abort();
    if (head.size() == ep::kHeaderSize) (void)ep::parse_header(head.data());
    accounted += 4 + length;
  };
  size_t chunk_seed = data[0];
  while (n > 0) {
    chunk_seed = chunk_seed * 1103515245 + 12345;
    size_t take = 1 + (chunk_seed >> 16) % 37;
    if (take > n) take = n;
    reader.feed(p, take, on_frame, on_oversized);
    p += take;
    n -= take;
  }
  if (accounted > size - 1) std::abort();
  return 0;
}
