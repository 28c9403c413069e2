// Framing: header layout, {packet,4} reassembly from arbitrary chunks, the oversized guard.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "frame.hpp"

using ep::FrameReader;
using ep::Header;

namespace {
std::string make_frame(uint8_t kind, uint32_t ctx, uint64_t id, const std::string& body) {
  std::string out;
  size_t start = ep::begin_frame(out, Header{kind, 0, 0, ctx, id});
  out += body;
  ep::finish_frame(out, start);
  return out;
}
void no_oversized(std::string_view, size_t) { FAIL("no frame here is over max_frame"); }
}  // namespace

TEST_CASE("a frame's header is written big-endian and read back") {
  std::string f = make_frame(65, 0x01020304, 0x1122334455667788ULL, "xyz");
  REQUIRE(f.size() == 4 + 16 + 3);
  CHECK(f.substr(0, 4) == std::string("\0\0\0\x13", 4));
  CHECK(static_cast<unsigned char>(f[4]) == 65);
  CHECK(f.substr(8, 4) == std::string("\x01\x02\x03\x04", 4));
  CHECK(f.substr(12, 8) == std::string("\x11\x22\x33\x44\x55\x66\x77\x88", 8));
  Header h = ep::parse_header(f.data() + 4);
  CHECK(h.kind == 65);
  CHECK(h.flags == 0);
  CHECK(h.ctx == 0x01020304u);
  CHECK(h.id == 0x1122334455667788ULL);
}

TEST_CASE("the reader reassembles frames split at every possible byte") {
  std::string stream = make_frame(1, 1, 7, "hello") + make_frame(2, 2, 8, "") + make_frame(3, 1, 9, std::string(1000, 'z'));
  for (size_t chunk = 1; chunk <= stream.size(); chunk += (chunk < 40 ? 1 : 97)) {
    FrameReader r;
    std::vector<std::string> got;
    for (size_t off = 0; off < stream.size(); off += chunk) {
      size_t n = std::min(chunk, stream.size() - off);
      r.feed(stream.data() + off, n, [&](std::string&& p) { got.push_back(std::move(p)); }, no_oversized);
    }
    REQUIRE(got.size() == 3);
    CHECK(ep::parse_header(got[0].data()).id == 7);
    CHECK(got[0].substr(16) == "hello");
    CHECK(got[1].size() == 16);
    CHECK(got[2].size() == 1016);
  }
}

TEST_CASE("a frame shorter than the header is still delivered (the dispatcher rejects it)") {
  std::string stream("\0\0\0\x03" "abc", 7);
  FrameReader r;
  std::vector<std::string> got;
  r.feed(stream.data(), stream.size(), [&](std::string&& p) { got.push_back(std::move(p)); }, no_oversized);
  REQUIRE(got.size() == 1);
  CHECK(got[0] == "abc");
}

TEST_CASE("a frame over max_frame is skipped exactly, its header reported, and the next frame read") {
  std::string big = make_frame(2, 3, 42, std::string(5000, 'x'));
  std::string stream = big + make_frame(1, 1, 43, "after");
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{100}, stream.size()}) {
    FrameReader r(1024);
    std::vector<std::string> got;
    std::vector<std::pair<std::string, size_t>> refused;
    for (size_t off = 0; off < stream.size(); off += chunk) {
      size_t n = std::min(chunk, stream.size() - off);
      r.feed(stream.data() + off, n, [&](std::string&& p) { got.push_back(std::move(p)); },
             [&](std::string_view head, size_t len) { refused.emplace_back(std::string(head), len); });
    }
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].second == 16 + 5000);
    REQUIRE(refused[0].first.size() == 16);
    Header h = ep::parse_header(refused[0].first.data());
    CHECK(h.kind == 2);
    CHECK(h.ctx == 3);
    CHECK(h.id == 42);
    REQUIRE(got.size() == 1);
    CHECK(ep::parse_header(got[0].data()).id == 43);
    CHECK(got[0].substr(16) == "after");
  }
}

TEST_CASE("random chunking of random frames loses and reorders nothing") {
  std::mt19937 rng(12345);
  std::vector<std::string> bodies;
  std::string stream;
  for (int i = 0; i < 200; ++i) {
    std::string body(rng() % 300, '\0');
    for (auto& c : body) c = static_cast<char>(rng());
    bodies.push_back(body);
    stream += make_frame(1, 1, static_cast<uint64_t>(i + 1), body);
  }
  FrameReader r;
  std::vector<std::string> got;
  size_t off = 0;
  while (off < stream.size()) {
    size_t n = std::min<size_t>(1 + rng() % 700, stream.size() - off);
    r.feed(stream.data() + off, n, [&](std::string&& p) { got.push_back(std::move(p)); }, no_oversized);
    off += n;
  }
  REQUIRE(got.size() == bodies.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(ep::parse_header(got[i].data()).id == i + 1);
    CHECK(got[i].substr(16) == bodies[i]);
  }
}
