#include "record_tools.hpp"

#include "frame.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "record_format.hpp"

namespace ep::rec {

namespace {

bool read_file(const char* path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream s;
  s << f.rdbuf();
  out = s.str();
  return true;
}

uint64_t be(std::string_view s, size_t at, size_t n) { return ep::be(s.data() + at, static_cast<int>(n)); }

std::string end_text(const ParsedFile& f) {
  if (f.torn_tail) return "the last record is incomplete (the port died while writing it)";
  if (f.records.empty()) return "no records";
  const Record& last = f.records.back();
  if (last.type == Type::End) {
    uint32_t why = last.payload.size() == 4 ? static_cast<uint32_t>(be(last.payload, 0, 4)) : 99;
    return why == 0 ? "ended: the port's input closed (normal exit)" : "ended: recording stopped";
  }
  if (last.type == Type::Truncated) return "ended: the size cap was reached (later frames are not recorded)";
  return "no end record: the recorded port died after the last record (crash or kill)";
}

bool died(const ParsedFile& f) {
  return f.torn_tail || (!f.records.empty() && f.records.back().type != Type::End &&
                         f.records.back().type != Type::Truncated);
}

std::vector<std::string> args_of(const ParsedFile& f) {
  std::vector<std::string> args;
  for (const Record& r : f.records) {
    if (r.type != Type::Args) continue;
    size_t at = 0;
    while (at < r.payload.size()) {
      size_t z = r.payload.find('\0', at);
      if (z == std::string::npos) z = r.payload.size();
      args.push_back(r.payload.substr(at, z - at));
      at = z + 1;
    }
    break;
  }
  return args;
}

std::string stamp(uint64_t ns) {
  char b[40];
  std::snprintf(b, sizeof b, "+%llu.%06llus", static_cast<unsigned long long>(ns / 1000000000ull),
                static_cast<unsigned long long>((ns / 1000) % 1000000));
  return b;
}

}  // namespace

int dump_main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: erlang_python_port dump FILE [--full]\n");
    return 2;
  }
  bool full = argc > 3 && std::strcmp(argv[3], "--full") == 0;
  std::string bytes;
  if (!read_file(argv[2], bytes)) {
    std::fprintf(stderr, "dump: cannot read %s: %s\n", argv[2], std::strerror(errno));
    return 2;
  }
  ParsedFile f = parse_file(bytes);
  if (!f.error.empty()) {
    std::fprintf(stderr, "dump: %s: %s\n", argv[2], f.error.c_str());
    return 2;
  }
  time_t secs = static_cast<time_t>(f.header.start_unix_ns / 1000000000ull);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&secs));
  std::printf("recording %s: format 1, codec %s, started %s, cap %llu bytes\n", argv[2],
              f.header.codec == 0 ? "etf" : "msgpack", when, static_cast<unsigned long long>(f.header.max_bytes));
  size_t n = 0;
  for (const Record& r : f.records) {
    ++n;
    switch (r.type) {
      case Type::Args: {
        std::string line;
        for (const auto& a : args_of(f)) line += " " + a;
        std::printf("#%zu %s args:%s\n", n, stamp(r.t_ns).c_str(), line.c_str());
        break;
      }
      case Type::In:
      case Type::Out:
        std::printf("#%zu %s %s %s\n", n, stamp(r.t_ns).c_str(), r.type == Type::In ? "E->P" : "P->E",
                    describe_frame(f.header.codec, r.payload, full ? 0 : 200).c_str());
        break;
      case Type::End:
      case Type::Truncated:
        std::printf("#%zu %s %s\n", n, stamp(r.t_ns).c_str(), r.type == Type::End ? "end" : "truncated (cap)");
        break;
      default:
        std::printf("#%zu %s unknown record type %d (%zu bytes)\n", n, stamp(r.t_ns).c_str(),
                    static_cast<int>(r.type), r.payload.size());
    }
  }
  std::printf("%s\n", end_text(f).c_str());
  return 0;
}

namespace {

struct Expected {
  size_t record;  // 1-based record number in the file
  std::string frame;
  long match = -1;  // index into received
};

struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;
  bool eof = false;
  std::string buf;
  std::vector<std::string> frames;  // every frame it wrote, in order

  // Reads what is there until `deadline`; false at EOF.
  void pump(std::chrono::steady_clock::time_point deadline) {
    if (eof) return;
    auto now = std::chrono::steady_clock::now();
    int ms = now >= deadline ? 0 : static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()) + 1;
    pollfd p{out, POLLIN, 0};
    int rc = ::poll(&p, 1, ms);
    if (rc <= 0) return;
    char tmp[1 << 16];
    ssize_t r = ::read(out, tmp, sizeof tmp);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) return;
      eof = true;
      return;
    }
    buf.append(tmp, static_cast<size_t>(r));
    while (buf.size() >= 4) {
      size_t len = be(buf, 0, 4);
      if (buf.size() - 4 < len) break;
      frames.push_back(buf.substr(4, len));
      buf.erase(0, 4 + len);
    }
  }
};

std::tuple<uint8_t, uint64_t, uint64_t> key(std::string_view f) {
  return {static_cast<uint8_t>(f[0]), be(f, 4, 4), be(f, 8, 8)};
}

bool first_int(int codec, std::string_view frame, int64_t& v) {
  Term t;
  std::string err;
  if (!parse_body(codec, frame.substr(16), t, err) || t.k != Term::K::Tuple || t.items.empty() ||
      t.items[0].k != Term::K::Integer)
    return false;
  v = t.items[0].integer;
  return true;
}

std::string norm(int codec, std::string_view frame) {
  Term t;
  std::string err;
  if (!parse_body(codec, frame.substr(16), t, err)) return "<undecodable: " + err + ">";
  return normalised_text(static_cast<uint8_t>(frame[0]), t);
}

std::string signal_text(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "status " + std::to_string(status);
}

}  // namespace

int replay_main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: erlang_python_port replay FILE [--timeout-ms N] [--port EXE] [PORT OPTIONS...]\n");
    return 2;
  }
  int timeout_ms = 10000;
  std::string exe = "/proc/self/exe";
  std::vector<std::string> extra;
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) timeout_ms = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--port") == 0 && i + 1 < argc) exe = argv[++i];
    else extra.push_back(argv[i]);
  }
  std::string bytes;
  if (!read_file(argv[2], bytes)) {
    std::fprintf(stderr, "replay: cannot read %s: %s\n", argv[2], std::strerror(errno));
    return 2;
  }
  ParsedFile f = parse_file(bytes);
  if (!f.error.empty()) {
    std::fprintf(stderr, "replay: %s: %s\n", argv[2], f.error.c_str());
    return 2;
  }
  const int codec = f.header.codec;
  // The frames to send (in order) and, for each, the port's frames recorded before the next one.
  std::vector<std::pair<size_t, std::string>> sends;
  std::vector<std::vector<Expected>> windows(1);
  bool recorded_hello = false;
  std::set<uint64_t> skipped_ids;
  for (size_t i = 0; i < f.records.size(); ++i) {
    const Record& r = f.records[i];
    if (r.type != Type::In && r.type != Type::Out) continue;
    if (r.payload.size() < 16) continue;
    if (static_cast<uint8_t>(r.payload[1]) & 0x02) {
      std::fprintf(stderr,
                   "replay: record #%zu (%s) uses the shared-memory transport (flag 0x02): its body lived in shared "
                   "memory, not in the recording, so this recording cannot be replayed (dump shows it)\n",
                   i + 1, kind_name(static_cast<uint8_t>(r.payload[0])).c_str());
      return 3;
    }
    uint8_t kind = static_cast<uint8_t>(r.payload[0]);
    if (r.type == Type::In && kind == 25) {
      // A `record` frame: never replayed (it would write over files, maybe this very recording); its
      // answer is not compared.
      skipped_ids.insert(be(r.payload, 8, 8));
      continue;
    }
    if (r.type == Type::Out && skipped_ids.count(be(r.payload, 8, 8))) continue;
    // shm_release (§3.12): names a region of the recorded port; the replayed one has none (every body
    // is inline), so it would answer protocol_error bad_shm. It has no answer to skip.
    if (r.type == Type::In && kind == 24) continue;
    // shm_consumed (§3.12, bulk): the recorded port handing back a callback reply's region; the
    // replayed one reads every reply inline and sends none.
    if (r.type == Type::Out && kind == 83) continue;
    if (r.type == Type::In) {
      sends.emplace_back(i + 1, r.payload);
      windows.emplace_back();
    } else {
      if (static_cast<uint8_t>(r.payload[0]) == 64) recorded_hello = true;
      windows.back().push_back(Expected{i + 1, r.payload});
    }
  }
  // Begun at run time (no hello): frames before the first E frame answer frames sent before it.
  if (!recorded_hello) windows[0].clear();
  // The port's command line: the recorded one without the recording, crash-file and shared-memory
  // options, then ours.
  std::vector<std::string> args;
  auto rec_args = args_of(f);
  for (size_t i = 1; i < rec_args.size(); ++i) {
    const std::string& a = rec_args[i];
    // Nor shared memory (§3.12): the recording has every body inline, and the replayed port must not
    // make region files in (or next to) the recorded VM's directory, nor answer with descriptors.
    if ((a == "--record" || a == "--record-max" || a == "--crash-file" || a == "--shm-dir" ||
         a == "--shm-threshold" || a == "--shm-regions" || a == "--shm-keep") &&
        i + 1 < rec_args.size()) {
      ++i;
      continue;
    }
    args.push_back(a);
  }
  if (rec_args.empty()) args = {"--codec", codec == 0 ? "etf" : "msgpack"};
  for (auto& a : extra) args.push_back(a);

  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "replay: pipe: %s\n", std::strerror(errno));
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  Child c;
  c.pid = fork();
  if (c.pid == 0) {
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    std::vector<char*> av;
    std::string name = "erlang_python_port";
    av.push_back(name.data());
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    execv(exe.c_str(), av.data());
    std::fprintf(stderr, "replay: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  c.in = to_child[1];
  c.out = from_child[0];

  std::map<int64_t, int64_t> callback_ids;  // recorded callback id -> the replayed port's
  std::vector<bool> used;
  auto match_window = [&](std::vector<Expected>& w) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    // Bounded by the deadline, or by the child's EOF.
    for (;;) {
      used.resize(c.frames.size(), false);
      bool all = true;
      for (Expected& e : w) {
        if (e.match >= 0) continue;
        for (size_t j = 0; j < c.frames.size(); ++j) {
          if (used[j] || key(c.frames[j]) != key(e.frame)) continue;
          used[j] = true;
          e.match = static_cast<long>(j);
          uint8_t k = static_cast<uint8_t>(e.frame[0]);
          int64_t old_id = 0, new_id = 0;
          if ((k == 67 || k == 68) && first_int(codec, e.frame, old_id) && first_int(codec, c.frames[j], new_id))
            callback_ids[old_id] = new_id;
          break;
        }
        if (e.match < 0) all = false;
      }
      if (all || c.eof || std::chrono::steady_clock::now() >= deadline) return;
      c.pump(deadline);
    }
  };
  auto send = [&](std::string frame) {
    if (static_cast<uint8_t>(frame[0]) == 6) {
      // callback_reply names the port's callback id: the replayed port may have chosen another.
      auto it = callback_ids.find(static_cast<int64_t>(be(frame, 8, 8)));
      if (it != callback_ids.end())
        for (int i = 0; i < 8; ++i) frame[8 + i] = static_cast<char>((static_cast<uint64_t>(it->second) >> (8 * (7 - i))) & 0xff);
    }
    std::string wire;
    for (int i = 3; i >= 0; --i) wire.push_back(static_cast<char>((frame.size() >> (8 * i)) & 0xff));
    wire += frame;
    size_t at = 0;
    while (at < wire.size()) {
      ssize_t w = ::write(c.in, wire.data() + at, wire.size() - at);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      at += static_cast<size_t>(w);
    }
    return true;
  };
  match_window(windows[0]);
  size_t sent = 0;
  for (size_t i = 0; i < sends.size() && !c.eof; ++i) {
    if (!send(sends[i].second)) break;
    ++sent;
    match_window(windows[i + 1]);
  }
  if (died(f)) {
    // The recorded port died after its last record: give the replayed one the same chance before its
    // input closes (an EOF now would let it exit cleanly before a crashing request ran).
    auto crash_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!c.eof && std::chrono::steady_clock::now() < crash_deadline) c.pump(crash_deadline);
  }
  close(c.in);
  auto end_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!c.eof && std::chrono::steady_clock::now() < end_deadline) c.pump(end_deadline);
  int status = 0;
  if (!c.eof) kill(c.pid, SIGKILL);
  waitpid(c.pid, &status, 0);
  used.resize(c.frames.size(), false);

  // The report.
  size_t compared = 0, diffs = 0;
  auto diff = [&](const std::string& line) {
    if (++diffs <= 50) std::printf("%s\n", line.c_str());
  };
  for (auto& w : windows) {
    for (Expected& e : w) {
      ++compared;
      std::string want = norm(codec, e.frame);
      std::string head = kind_name(static_cast<uint8_t>(e.frame[0])) + " ctx=" + std::to_string(be(e.frame, 4, 4)) +
                         " id=" + std::to_string(be(e.frame, 8, 8));
      if (e.match < 0) {
        diff("- #" + std::to_string(e.record) + " " + head + " missing: recorded " + want);
        continue;
      }
      std::string got = norm(codec, c.frames[static_cast<size_t>(e.match)]);
      if (got != want) diff("~ #" + std::to_string(e.record) + " " + head + "\n    recorded: " + want + "\n    replayed: " + got);
    }
  }
  // After a size cap the recorded replies stop: what the replayed port says past them is not known.
  bool truncated = !f.records.empty() && f.records.back().type == Type::Truncated;
  for (size_t j = 0; j < c.frames.size() && !truncated; ++j) {
    if (used[j]) continue;
    if (!recorded_hello && static_cast<uint8_t>(c.frames[j][0]) == 64) continue;  // recording began at run time
    diff("+ unexpected " + describe_frame(codec, c.frames[j], 200));
  }
  bool recorded_death = died(f);
  bool replay_death = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::printf("recorded: %s\n", end_text(f).c_str());
  std::printf("replayed: %zu of %zu frames sent, %zu replies compared; the port ended with %s\n", sent, sends.size(),
              compared, signal_text(status).c_str());
  if (recorded_death != replay_death) {
    ++diffs;
    std::printf("~ the recorded port %s, the replayed one %s\n", recorded_death ? "died" : "exited normally",
                replay_death ? "died" : "exited normally");
  }
  if (diffs > 50) std::printf("... %zu differences in all\n", diffs);
  if (diffs == 0) {
    std::printf("replay: all frames match%s\n", recorded_death ? " (the crash was reproduced)" : "");
    return 0;
  }
  std::printf("replay: %zu differences\n", diffs);
  return 1;
}

}  // namespace ep::rec
