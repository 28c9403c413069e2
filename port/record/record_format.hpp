// The recording file format (protocol/RECORDING.md): a 32-byte file header, then records of a 16-byte
// record header and a payload. Reading, writing and printing it needs no Python (dump and replay run
// without an interpreter), so the frame bodies are parsed here into a small term tree of their own.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ep::rec {

inline constexpr char kMagic[8] = {'E', 'P', 'R', 'E', 'C', '1', '\r', '\n'};
inline constexpr size_t kFileHeaderSize = 32;
inline constexpr size_t kRecordHeaderSize = 16;
inline constexpr uint16_t kVersion = 1;

// Record types (the first byte of a record header).
enum class Type : uint8_t {
  In = 'E',         // a frame the port read from Erlang (header + body, no length prefix)
  Out = 'P',        // a frame the port wrote to Erlang
  Args = 'A',       // the port's command line, NUL-separated (first record when recording from start-up)
  End = 'X',        // recording ended: payload u32 reason (0 input EOF, 1 stopped by a record frame)
  Truncated = 'T',  // the size cap was reached: nothing follows
};

struct FileHeader {
  uint16_t version = kVersion;
  uint8_t codec = 0;  // 0 etf, 1 msgpack
  uint64_t start_unix_ns = 0;
  uint64_t max_bytes = 0;
};

struct Record {
  Type type = Type::In;
  uint64_t t_ns = 0;  // since the recording started (monotonic clock)
  std::string payload;
};

// Encoders (the recorder writes exactly these bytes).
std::string encode_file_header(const FileHeader& h);
std::string encode_record_header(Type type, uint32_t length, uint64_t t_ns);

struct ParsedFile {
  FileHeader header;
  std::vector<Record> records;
  bool torn_tail = false;  // the last record is incomplete (the writer died inside a write)
  std::string error;       // non-empty: not a recording (bad magic or version, short header)
};
ParsedFile parse_file(std::string_view bytes);

// A decoded body. Integers that fit int64 are `integer`; bigger ones keep their decimal digits in `text`.
struct Term {
  enum class K { Integer, BigInt, Float, Atom, Binary, List, Tuple, Map, Pid, Ref, Opaque, Nil, Bool };
  K k = K::Nil;
  int64_t integer = 0;
  double real = 0;
  std::string text;            // atom name, binary bytes, big integer digits, opaque description
  std::vector<Term> items;     // list, tuple; map: key, value, key, value...
};
// False with `err` set if the body is not a whole term of that codec (0 etf, 1 msgpack).
bool parse_body(int codec, std::string_view body, Term& out, std::string& err);
// Erlang-like text: atoms bare, binaries <<"...">>, maps #{k => v}. max_binary: longer binaries are
// cut and marked (0: never).
std::string to_text(const Term& t, size_t max_binary = 0);

// What replay compares: a body's text with what legitimately differs between two runs replaced
// (RECORDING.md "Normalisation"): os_pid in hello and stats, hexadecimal addresses (0x7f...) anywhere
// in strings, and in callback/send frames the port-chosen callback id.
std::string normalised_text(uint8_t kind, const Term& body);

// Names of the wire kinds (PROTOCOL.md §3), "kind N" for unknown ones.
std::string kind_name(uint8_t kind);

// One frame (header + body) as a line of dump output.
std::string describe_frame(int codec, std::string_view frame, size_t max_binary);

}  // namespace ep::rec
