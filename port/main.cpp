// erlang_python_port: embeds CPython and serves the erlang_python protocol on stdio.
//
//   erlang_python_port [--codec etf|msgpack] [--contexts N] [--pylib DIR] [--crash-file PATH]
//                      [--max-frame BYTES] [--spin-us N] [--cancel-stuck-ms N] [--max-contexts N]
//                      [--output-window BYTES] [--max-out-frame BYTES] [--memory-limit BYTES]
//                      [--record PATH] [--record-max BYTES]
//                      [--shm-dir DIR] [--shm-threshold BYTES] [--shm-regions N] [--shm-keep BYTES]
//                      [--pipe-size BYTES]
//   erlang_python_port dump FILE [--full]          (protocol/RECORDING.md)
//   erlang_python_port replay FILE [OPTIONS...]
//
// Start-up order: keep the protocol descriptors private (so nothing Python prints can reach them),
// die with the VM, start Python and the contexts, say hello, then run the libuv loop on the input
// until EOF. See protocol/PROTOCOL.md.
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include <csignal>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "frame.hpp"
#include "log.hpp"
#include "output.hpp"
#include "record_tools.hpp"
#include "recorder.hpp"
#include "runtime.hpp"
#include "shm.hpp"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitPython = 3;

// Recording from start-up (opsb: RECORDING.md): --record PATH, --record-max BYTES.
std::string g_record_path;
uint64_t g_record_max = 0;

// A whole decimal number within [lo, hi]; atoi/strtoull would take "12abc" as 12 and "x" as 0.
template <typename T>
bool number(const std::string& v, unsigned long long lo, unsigned long long hi, T& out) {
  if (v.empty() || v.size() > 20 || v.find_first_not_of("0123456789") != std::string::npos) return false;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), nullptr, 10);
  if (errno != 0 || n < lo || n > hi) return false;
  out = static_cast<T>(n);
  return true;
}

bool parse_args(int argc, char** argv, ep::Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--codec" && value(v)) {
      if (v == "etf") o.codec = ep::CodecKind::Etf;
      else if (v == "msgpack") o.codec = ep::CodecKind::Msgpack;
      else return false;
    } else if (a == "--contexts" && value(v)) {
      if (!number(v, 1, 1024, o.contexts)) return false;
    } else if (a == "--max-contexts" && value(v)) {
      if (!number(v, 1, 65536, o.max_contexts)) return false;
    } else if (a == "--pylib" && value(v)) {
      o.pylib = v;
    } else if (a == "--crash-file" && value(v)) {
      o.crash_file = v;
    } else if (a == "--max-frame" && value(v)) {
      if (!number(v, ep::kHeaderSize, UINT32_MAX, o.max_frame)) return false;
    } else if (a == "--cancel-stuck-ms" && value(v)) {
      if (!number(v, 1, INT32_MAX, o.cancel_stuck_ms)) return false;
    } else if (a == "--output-window" && value(v)) {
      if (!number(v, 1, UINT64_MAX >> 1, o.output_window)) return false;
    } else if (a == "--max-out-frame" && value(v)) {
      if (!number(v, 1024, ep::kMaxOutFrame, o.max_out_frame)) return false;
    } else if (a == "--memory-limit" && value(v)) {  // opsb
      if (!number(v, 0, INT64_MAX, o.memory_limit)) return false;
    } else if (a == "--record" && value(v)) {
      g_record_path = v;
    } else if (a == "--record-max" && value(v)) {
      if (!number(v, 1, UINT64_MAX >> 1, g_record_max)) return false;
    } else if (a == "--shm-dir" && value(v)) {  // bulk (PROTOCOL.md §3.12)
      o.shm.dir = v;
    } else if (a == "--shm-threshold" && value(v)) {
      if (!number(v, 1, UINT64_MAX >> 1, o.shm.threshold)) return false;
    } else if (a == "--shm-regions" && value(v)) {
      if (!number(v, 1, 1024, o.shm.regions)) return false;
    } else if (a == "--shm-keep" && value(v)) {
      if (!number(v, 0, UINT64_MAX >> 1, o.shm.keep)) return false;
    } else if (a == "--pipe-size" && value(v)) {
      if (!number(v, 0, INT32_MAX, o.pipe_size)) return false;
    } else if (a == "--spin-us" && value(v)) {
      if (!number(v, 0, INT32_MAX, o.spin_us)) return false;
    } else {
      return false;
    }
  }
  return true;
}

// Moves fd to a private descriptor (close-on-exec, so child processes cannot hold the protocol
// pipes open) and points the original at `replacement`.
int privatize(int fd, int replacement) {
  int priv = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (priv < 0 || dup2(replacement, fd) < 0) return -1;
  return priv;
}

// The private protocol descriptors. A child made by fork() (os.fork, multiprocessing) must not hold
// them: the VM only sees the port exit once every writer of its pipe is gone.
int g_in_fd = -1;
int g_out_fd = -1;
ep::Output* g_output = nullptr;

void close_protocol_fds_in_child() {
  if (g_output) g_output->forget_fd();
  if (g_in_fd >= 0) close(g_in_fd);
  if (g_out_fd >= 0) close(g_out_fd);
}

void on_watchdog(uv_timer_t* timer) {
  auto* rt = static_cast<ep::Runtime*>(timer->data);
  int64_t next = rt->check_stuck_cancels();
  if (next >= 0) uv_timer_start(timer, on_watchdog, static_cast<uint64_t>(next), 0);
}

struct Loop {
  ep::Runtime* rt;
  ep::FrameReader reader;
  uint64_t last_frame_ns = 0;
};

// Records one frame read from the VM. A body in shared memory (§3.12) is recorded inline, its flag
// cleared, so that a replay (which has no regions) can send it down a pipe; only while recording.
void record_in(ep::Runtime& rt, const std::string& payload) {
  ep::ShmDesc d;
  ep::ShmView v;
  std::string err;
  if (payload.size() >= ep::kHeaderSize && (static_cast<uint8_t>(payload[1]) & ep::kFlagShm) && rt.shm() &&
      ep::parse_shm_desc(std::string_view(payload).substr(ep::kHeaderSize), d) && rt.shm()->view(d, v, err)) {
    std::string inline_frame = payload.substr(0, ep::kHeaderSize);
    inline_frame[1] = static_cast<char>(static_cast<uint8_t>(inline_frame[1]) & ~ep::kFlagShm);
    inline_frame.append(v.bytes);
    ep::recorder().frame_in(inline_frame);
    return;
  }
  ep::recorder().frame_in(payload);
}

char g_read_buf[1 << 18];

void on_alloc(uv_handle_t*, size_t, uv_buf_t* buf) { *buf = uv_buf_init(g_read_buf, sizeof g_read_buf); }

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* loop = static_cast<Loop*>(stream->data);
  if (nread < 0) {  // EOF or error: the VM closed the port or is gone
    ep::recorder().stop(0);
    _exit(0);
  }
  if (nread == 0) return;
  loop->last_frame_ns = uv_hrtime();
  loop->reader.feed(
      buf->base, static_cast<size_t>(nread),
      [&](std::string&& payload) {
        if (ep::recorder().active()) record_in(*loop->rt, payload);
        loop->rt->dispatch(std::move(payload));
      },
      [&](std::string_view head, size_t length) {
        // Refuse that one request (its header tells whom to answer) and go on.
        ep::Header h;
        if (head.size() >= ep::kHeaderSize) h = ep::parse_header(head.data());
        loop->rt->protocol_error(h.ctx, h.id, "oversized",
                                 "frame of " + std::to_string(length) + " bytes exceeds max_frame (" +
                                     std::to_string(loop->reader.max_frame()) + ")");
      });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "dump") == 0) return ep::rec::dump_main(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "replay") == 0) return ep::rec::replay_main(argc, argv);
  ep::Options opts;
  if (!parse_args(argc, argv, opts)) {
    std::fprintf(stderr,
                 "usage: erlang_python_port [--codec etf|msgpack] [--contexts N] [--pylib DIR] "
                 "[--crash-file PATH] [--max-frame BYTES] [--spin-us N] [--cancel-stuck-ms N] "
                 "[--max-contexts N] [--output-window BYTES] [--max-out-frame BYTES] [--memory-limit BYTES] "
                 "[--record PATH] "
                 "[--record-max BYTES] [--shm-dir DIR] [--shm-threshold BYTES] [--shm-regions N] "
                 "[--shm-keep BYTES] [--pipe-size BYTES]\n       erlang_python_port dump FILE [--full]\n"
                 "       erlang_python_port replay FILE [--timeout-ms N] [--port EXE] [PORT OPTIONS...]\n");
    return kExitUsage;
  }
  // Large frames (MBs) are read, decoded and encoded in fresh buffers every time. By default glibc
  // mmaps each one over 32 MiB and unmaps it on free, so every bulk request pays page faults and
  // zeroing again; keeping buffers up to 256 MiB in the heap lets the next request reuse the pages
  // (bench/: 64 MiB bulk). Bigger ones are still mmapped, and a free heap top over 256 MiB is given
  // back, so a one-off huge request does not pin its memory for the life of the port.
  // bulk (measured, bench/ 64 MiB round trip with shared memory: 124 -> 75 ms, half the port's time
  // was page faults): glibc refuses an mmap threshold over 32 MiB (the call above it fails and changes
  // nothing), and context threads allocate from per-thread arenas whose heaps are mmapped anyway. So
  // large blocks come from the one main heap (arena_max 1) and are never mmapped (mmap_max 0); the
  // trim threshold still gives back a free heap top over 256 MiB. Small objects hardly meet in malloc:
  // pymalloc serves them.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  // Die with the VM, even if it is killed without closing our stdin.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 0;
  std::signal(SIGPIPE, SIG_IGN);

  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int in_fd = privatize(0, devnull);
  int out_fd = privatize(1, 2);  // fd 1 now writes to stderr: print() cannot corrupt a frame
  if (devnull < 0 || in_fd < 0 || out_fd < 0) {
    EP_LOG("cannot set up the protocol descriptors: %s", std::strerror(errno));
    return kExitUsage;
  }
  close(devnull);
  g_in_fd = in_fd;
  g_out_fd = out_fd;
  pthread_atfork(nullptr, nullptr, close_protocol_fds_in_child);

  ep::recorder().set_args(std::vector<std::string>(argv, argv + argc));
  if (!g_record_path.empty()) {
    std::string err;
    if (!ep::recorder().start(g_record_path, g_record_max, opts.codec == ep::CodecKind::Etf ? 0 : 1, err))
      EP_LOG("recording not started: %s", err.c_str());
  }
  // bulk: a bigger pipe means fewer wake-ups per large frame in both directions (the VM's end is the
  // same pipe). 0 leaves the kernel's default; an unprivileged process may go up to
  // /proc/sys/fs/pipe-max-size (1 MiB by default), and a refusal changes nothing.
  if (opts.pipe_size > 0) {
    (void)fcntl(in_fd, F_SETPIPE_SZ, opts.pipe_size);
    (void)fcntl(out_fd, F_SETPIPE_SZ, opts.pipe_size);
  }

  ep::Output output(out_fd);
  g_output = &output;
  ep::Runtime runtime(opts, output);
  // bulk (PROTOCOL.md §3.12): the regions exist before the hello, so the Erlang side may use them as
  // soon as it has it, and before any thread writes. Failing to make them only turns shared memory off.
  ep::ShmDir shm;
  if (!opts.shm.dir.empty()) {
    if (shm.open(opts.shm, static_cast<long>(getpid()))) {
      output.set_shm(&shm);
      runtime.set_shm(&shm);
    } else {
      EP_LOG("shared memory off: cannot create regions in %s: %s", opts.shm.dir.c_str(), std::strerror(errno));
    }
  }
  if (!runtime.start()) return kExitPython;
  runtime.write_hello();

  Loop loop{&runtime, ep::FrameReader(opts.max_frame)};
  uv_loop_t* uv = uv_default_loop();
  // The cancel watchdog's one timer (Runtime::on_cancel arms it, on this thread). Reading a file
  // instead of a pipe (tests) runs no loop, so there it never fires.
  uv_timer_t watchdog;
  uv_timer_init(uv, &watchdog);
  watchdog.data = &runtime;
  runtime.set_watchdog_timer([&watchdog](uint64_t ms) { uv_timer_start(&watchdog, on_watchdog, ms, 0); });
  uv_pipe_t input;
  uv_pipe_init(uv, &input, 0);
  if (uv_pipe_open(&input, in_fd) != 0) {
    // Not a pipe (a file, in tests): read it with plain blocking reads.
    for (;;) {
      ssize_t n = read(in_fd, g_read_buf, sizeof g_read_buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ep::recorder().stop(0);
        _exit(0);
      }
      uv_buf_t b = uv_buf_init(g_read_buf, static_cast<unsigned>(n));
      input.data = &loop;
      on_read(reinterpret_cast<uv_stream_t*>(&input), n, &b);
    }
  }
  input.data = &loop;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&input), on_alloc, on_read);
  // Spin briefly after each frame before sleeping in epoll: a sleeping core takes tens of
  // microseconds to wake, which would otherwise be paid on every request.
  const uint64_t spin_ns = static_cast<uint64_t>(opts.spin_us) * 1000;
  for (;;) {
    if (spin_ns > 0 && uv_hrtime() - loop.last_frame_ns < spin_ns) uv_run(uv, UV_RUN_NOWAIT);
    else uv_run(uv, UV_RUN_ONCE);
  }
}
