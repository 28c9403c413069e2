// echo_port: the baseline the benchmark compares erlang_python_port against.
//
// It reads {packet,4} frames (4-byte big-endian length, then that many bytes) on stdin and writes each one
// back unchanged on stdout, then waits for the next. It does nothing else, so its round trip is the cost of
// the pipe, the kernel's wake-ups and the VM's port machinery: the physical limit our port is measured
// against (BRIEF.md, "Where peers stop").
//
//   echo_port [--spin-us N] [--max-frame BYTES]
//
// --spin-us N   after the input runs dry, keep polling stdin (non-blocking reads) for N microseconds before
//               blocking in poll(). erlang_python_port has such a spin window; running the baseline with the
//               same window keeps the comparison fair at every setting. 0 (the default) blocks at once.
// --max-frame   largest accepted frame body (default 1 GiB). A longer length prefix ends the program with
//               status 4 (the echo port is only a baseline; the real port skips such a frame instead).
//
// Complete frames already in the input buffer are written back with one write(): they are contiguous and
// unchanged, so there is nothing to copy. Exit status 0 on EOF.
//
// Build: g++ -O2 -std=c++20 -o _build/bench/echo_port bench/echo_port.cpp   (bench/run.sh does this)

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace {

constexpr std::size_t kHeader = 4;
constexpr std::size_t kInitialBuffer = std::size_t{4} << 20;  // 4 MiB; grows for larger frames

struct Options {
    long spin_us = 0;
    std::uint64_t max_frame = std::uint64_t{1} << 30;
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr, "echo_port: %s\nusage: echo_port [--spin-us N] [--max-frame BYTES]\n", why);
    std::exit(2);
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if ((a == "--spin-us" || a == "--max-frame") && i + 1 < argc) {
            char* end = nullptr;
            errno = 0;
            unsigned long long v = std::strtoull(argv[++i], &end, 10);
            if (errno != 0 || end == argv[i] || *end != '\0') usage("bad number");
            if (a == "--spin-us")
                o.spin_us = static_cast<long>(v);
            else
                o.max_frame = v;
        } else {
            usage("unknown argument");
        }
    }
    return o;
}

// Writes all of [p, p+n) to fd, waiting in poll() if fd happens to be non-blocking.
bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= static_cast<std::size_t>(w);
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            pollfd pfd{fd, POLLOUT, 0};
            ::poll(&pfd, 1, -1);
        } else {
            return false;
        }
    }
    return true;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Reads what is available into [p, p+cap). Returns bytes read, 0 on EOF, -1 on error.
// With spin_us > 0 (fd is then non-blocking) it polls for that long before blocking in poll().
ssize_t read_some(int fd, char* p, std::size_t cap, long spin_us) {
    if (spin_us > 0) {
        using clock = std::chrono::steady_clock;
        const auto deadline = clock::now() + std::chrono::microseconds(spin_us);
        for (;;) {
            ssize_t r = ::read(fd, p, cap);
            if (r >= 0) return r;
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return -1;
            if (clock::now() >= deadline) break;
            cpu_relax();
        }
    }
    for (;;) {
        ssize_t r = ::read(fd, p, cap);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return -1;
        pollfd pfd{fd, POLLIN, 0};
        if (::poll(&pfd, 1, -1) < 0 && errno != EINTR) return -1;
    }
}

std::uint32_t be32(const char* p) {
    const auto* u = reinterpret_cast<const unsigned char*>(p);
    return (std::uint32_t{u[0]} << 24) | (std::uint32_t{u[1]} << 16) | (std::uint32_t{u[2]} << 8) |
           std::uint32_t{u[3]};
}

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse_args(argc, argv);
    if (opt.spin_us > 0) {
        int fl = ::fcntl(0, F_GETFL);
        if (fl < 0 || ::fcntl(0, F_SETFL, fl | O_NONBLOCK) < 0) {
            std::perror("echo_port: fcntl");
            return 2;
        }
    }

    // buf[start, end) holds received bytes not yet echoed.
    std::vector<char> buf(kInitialBuffer);
    std::size_t start = 0, end = 0;

    for (;;) {
        // Echo every complete frame in the buffer with one write.
        std::size_t scan = start;
        std::size_t need = 0;  // size of the incomplete frame at `scan`, once its header is known
        while (end - scan >= kHeader) {
            std::uint64_t len = be32(buf.data() + scan);
            if (len > opt.max_frame) {
                std::fprintf(stderr, "echo_port: frame of %llu bytes exceeds --max-frame\n",
                             static_cast<unsigned long long>(len));
                return 4;
            }
            if (end - scan < kHeader + len) {
                need = kHeader + static_cast<std::size_t>(len);
                break;
            }
            scan += kHeader + static_cast<std::size_t>(len);
        }
        if (scan > start) {
            if (!write_all(1, buf.data() + start, scan - start)) return 1;
            start = scan;
        }

        // Make room: move the partial frame to the front, grow the buffer if the frame does not fit.
        if (start == end) {
            start = end = 0;
        } else if (start > 0 && (buf.size() - end < kHeader || (need && buf.size() - start < need) ||
                                 end == buf.size())) {
            std::memmove(buf.data(), buf.data() + start, end - start);
            end -= start;
            start = 0;
        }
        if (need > buf.size() - start) buf.resize(start + need);
        if (end == buf.size()) buf.resize(buf.size() * 2);

        ssize_t r = read_some(0, buf.data() + end, buf.size() - end, opt.spin_us);
        if (r == 0) return 0;  // EOF: the VM closed the port
        if (r < 0) {
            std::perror("echo_port: read");
            return 1;
        }
        end += static_cast<std::size_t>(r);
    }
}
