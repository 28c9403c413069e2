// The recording format (protocol/RECORDING.md): encoder and parser agree, torn tails are reported,
// bodies of both codecs print Erlang-like, and replay's normalisation hides only what it documents.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "record_format.hpp"
#include "recorder.hpp"

using namespace ep::rec;

namespace {
std::string frame(uint8_t kind, uint32_t ctx, uint64_t id, std::string body) {
  std::string f;
  f.push_back(static_cast<char>(kind));
  f.append(3, '\0');
  for (int i = 3; i >= 0; --i) f.push_back(static_cast<char>((ctx >> (8 * i)) & 0xff));
  for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((id >> (8 * i)) & 0xff));
  return f + body;
}
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
// term_to_binary({ok, <<"hi">>, [1, 300], #{os_pid => 7}})
const std::string kEtf("\x83\x68\x04\x77\x02ok\x6d\x00\x00\x00\x02hi\x6c\x00\x00\x00\x02\x61\x01\x62\x00\x00\x01\x2c\x6a"
                       "\x74\x00\x00\x00\x01\x77\x06os_pid\x61\x07",
                       42);
}  // namespace

TEST_CASE("record: the file header and record headers round-trip through parse_file") {
  FileHeader h;
  h.codec = 1;
  h.start_unix_ns = 1234567890123ull;
  h.max_bytes = 4096;
  std::string file = encode_file_header(h);
  CHECK(file.size() == kFileHeaderSize);
  std::string f1 = frame(1, 1, 281474976710657ull, kEtf);
  file += encode_record_header(Type::In, static_cast<uint32_t>(f1.size()), 42) + f1;
  file += encode_record_header(Type::End, 4, 99) + std::string("\0\0\0\0", 4);
  ParsedFile p = parse_file(file);
  REQUIRE(p.error.empty());
  CHECK(p.header.codec == 1);
  CHECK(p.header.start_unix_ns == 1234567890123ull);
  CHECK(p.header.max_bytes == 4096);
  REQUIRE(p.records.size() == 2);
  CHECK(p.records[0].type == Type::In);
  CHECK(p.records[0].t_ns == 42);
  CHECK(p.records[0].payload == f1);
  CHECK(p.records[1].type == Type::End);
  CHECK_FALSE(p.torn_tail);
}

TEST_CASE("record: a record cut short by a crash is reported, the ones before it are kept") {
  std::string file = encode_file_header(FileHeader{});
  std::string f1 = frame(65, 1, 7, kEtf);
  file += encode_record_header(Type::Out, static_cast<uint32_t>(f1.size()), 1) + f1;
  file += encode_record_header(Type::Out, 100, 2) + "only part";
  ParsedFile p = parse_file(file);
  CHECK(p.records.size() == 1);
  CHECK(p.torn_tail);
  CHECK(parse_file("not a recording at all, not at all").error == "not a recording (no EPREC1 header)");
}

TEST_CASE("record: ETF and msgpack bodies print as Erlang terms") {
  Term t;
  std::string err;
  REQUIRE(parse_body(0, kEtf, t, err));
  CHECK(to_text(t) == "{ok,<<\"hi\">>,[1,300],#{os_pid => 7}}");
  // msgpack: [true, nil, -1, "x", ext1 "atom", ext2 [1, 2.5]]
  const std::string mp("\x96\xc3\xc0\xff\xa1x\xd6\x01" "atom" "\xc7\x0b\x02\x92\x01\xcb\x40\x04\x00\x00\x00\x00\x00\x00", 26);
  REQUIRE(parse_body(1, mp, t, err));
  CHECK(to_text(t) == "[true,none,-1,<<\"x\">>,atom,{1,2.5}]");
  CHECK_FALSE(parse_body(0, std::string("\x83\x68\x02\x61", 4), t, err));
  CHECK(err == "truncated term");
  CHECK(describe_frame(0, frame(65, 2, 9, kEtf), 0) == "result ctx=2 id=9 {ok,<<\"hi\">>,[1,300],#{os_pid => 7}}");
  CHECK(describe_frame(0, frame(1, 1, 1, "x") .replace(1, 1, "\x02"), 0).find("shm(flag 0x02)") != std::string::npos);
}

TEST_CASE("record: normalisation hides os_pid, addresses and callback ids, nothing else") {
  Term t;
  std::string err;
  REQUIRE(parse_body(0, kEtf, t, err));
  CHECK(normalised_text(64, t) == "{ok,<<\"hi\">>,[1,300],#{os_pid => 7}}");  // a tuple: nothing to hide
  Term m;
  m.k = Term::K::Map;
  m.items.resize(2);
  m.items[0].k = Term::K::Atom;
  m.items[0].text = "os_pid";
  m.items[1].k = Term::K::Integer;
  m.items[1].integer = 4242;
  CHECK(normalised_text(64, m) == "#{os_pid => _}");
  CHECK(normalised_text(66, m) == "#{os_pid => 4242}");
  Term s;
  s.k = Term::K::Binary;
  s.text = "<object at 0x7f3a2b1c9d10> 0x1F";
  CHECK(normalised_text(69, s) == "<<\"<object at 0x_> 0x1F\">>");
}

TEST_CASE("record: the recorder writes what it is given, ends with X, and stops at its cap") {
  char tmpl[] = "/tmp/ep_record_test_XXXXXX";
  int fd = mkstemp(tmpl);
  REQUIRE(fd >= 0);
  close(fd);
  ep::Recorder r;
  r.set_args({"erlang_python_port", "--codec", "etf"});
  std::string err;
  REQUIRE(r.start(tmpl, 0, 0, err));
  std::string f1 = frame(2, 1, 5, kEtf);
  r.frame_in(f1);
  std::string wire;
  for (int k = 0; k < 2; ++k) {
    std::string f = frame(65, 1, 5 + k, kEtf);
    wire += std::string{0, 0, 0, static_cast<char>(f.size())} + f;
  }
  r.frames_out(wire);
  r.stop(0);
  CHECK_FALSE(r.active());
  ParsedFile p = parse_file(slurp(tmpl));
  REQUIRE(p.records.size() == 5);
  CHECK(p.records[0].type == Type::Args);
  CHECK(p.records[0].payload == std::string("erlang_python_port\0--codec\0etf\0", 31));
  CHECK(p.records[1].payload == f1);
  CHECK(p.records[2].type == Type::Out);
  CHECK(p.records[3].payload == frame(65, 1, 6, kEtf));
  CHECK(p.records[4].type == Type::End);

  // A cap that fits the header, the args and one frame: the second frame becomes T.
  uint64_t cap = kFileHeaderSize + kRecordHeaderSize + 31 + kRecordHeaderSize + f1.size();
  REQUIRE(r.start(tmpl, cap, 0, err));
  r.frame_in(f1);
  r.frame_in(f1);
  CHECK_FALSE(r.active());
  r.frame_in(f1);  // ignored once stopped
  p = parse_file(slurp(tmpl));
  REQUIRE(p.records.size() == 3);
  CHECK(p.records[2].type == Type::Truncated);
  CHECK_FALSE(r.start("/nonexistent-dir/x.eprec", 0, 0, err));
  CHECK(err.find("cannot open") == 0);
  std::remove(tmpl);
}
