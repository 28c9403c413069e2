// libFuzzer harness: the frame reader (port/io/frame.hpp). The input is fed in chunks whose sizes
// come from the input itself, with a small max_frame so that the oversized path runs too. Checks that
// the reader accounts for every byte: each frame it hands out or skips took its 4-byte length plus
// the length it announced, and none was longer than allowed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "frame.hpp"
#include "shm.hpp"  // bulk

#include <unistd.h>

#include <vector>

namespace {
// bulk (PROTOCOL.md §3.12): one set of regions for the whole run, in a fresh directory; region 0 of
// the request side holds 4 KiB. Every shm payload's descriptor is looked up (never a crash, only an
// error for what is out of bounds), and the raw input is offered to divert(), which must cut it only
// at the frames it can account for.
struct FuzzShm {
  std::string dir;
  ep::ShmDir shm;
  FuzzShm() {
    char tmpl[] = "/tmp/ep_fuzz_shm.XXXXXX";
    if (mkdtemp(tmpl) && shm.open(ep::ShmOptions{tmpl, 32, 2, 1 << 20}, getpid())) {
      dir = tmpl;
      std::string p = dir + "/p" + std::to_string(getpid()) + ".e0";
      if (truncate(p.c_str(), 4096) != 0) std::abort();
    }
  }
  ~FuzzShm() {
    shm.close_all();  // the files first, so the directory can go
    if (!dir.empty()) rmdir(dir.c_str());
  }
};

ep::ShmDir* shm_dir() {
  static FuzzShm fuzz;  // destroyed at exit: nothing left in /tmp
  return &fuzz.shm;
}

void fuzz_shm(const std::string& payload) {
  if (payload.size() < ep::kHeaderSize) return;
  ep::ShmDesc d;
  if (!ep::parse_shm_desc(std::string_view(payload).substr(ep::kHeaderSize), d)) return;
  ep::ShmView v;
  std::string err;
  if (shm_dir()->view(d, v, err) && (d.offset + d.length > 4096 || v.bytes.size() != d.length)) std::abort();
}

void fuzz_divert(const char* p, size_t n) {
  std::string frames(p, n), scratch;
  std::vector<ep::ShmDir::Piece> pieces;
  if (!shm_dir()->divert(frames, scratch, pieces)) return;
  size_t total = 0;
  for (auto& piece : pieces) total += piece.n;
  if (total > frames.size()) std::abort();  // a diverted frame only ever gets shorter
  for (uint32_t k = 0; k < 2; ++k) (void)shm_dir()->release(k);
}
}  // namespace

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
    fuzz_shm(payload);  // bulk
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
  fuzz_divert(reinterpret_cast<const char*>(data + 1), size - 1);  // bulk
  return 0;
}
