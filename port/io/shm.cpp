#include "shm.hpp"

#include "frame.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ep {

namespace {
bool diverted_kind(uint8_t kind) {
  // result, callback, stream_chunk: the frames that carry values to a waiting caller (§3.12).
  return kind == 65 || kind == 67 || kind == 72;
}
}  // namespace

bool parse_shm_desc(std::string_view body, ShmDesc& d) {
  if (body.size() != kShmDescSize) return false;
  d.region = static_cast<uint32_t>(be(body.data(), 4));
  d.offset = be(body.data() + 4, 8);
  d.length = be(body.data() + 12, 8);
  return true;
}

void put_shm_desc(std::string& out, const ShmDesc& d) {
  put_be(out, d.region, 4);
  put_be(out, d.offset, 8);
  put_be(out, d.length, 8);
}

ShmMapping::~ShmMapping() {
  if (addr) munmap(addr, size);
}

bool ShmDir::make(Region& r, const std::string& path) {
  r.path = path;
  r.fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  return r.fd >= 0;
}

bool ShmDir::open(const ShmOptions& opts, long pid) {
  opts_ = opts;
  if (opts_.dir.empty() || opts_.regions < 1) return false;
  in_.resize(static_cast<size_t>(opts_.regions));
  out_.resize(static_cast<size_t>(opts_.regions));
  bool ok = true;
  for (int k = 0; k < opts_.regions && ok; ++k) {
    std::string base = opts_.dir + "/p" + std::to_string(pid) + ".";
    ok = make(in_[k], base + "e" + std::to_string(k)) && make(out_[k], base + "o" + std::to_string(k));
  }
  if (!ok) {
    close_all();
    in_.clear();
    out_.clear();
    return false;
  }
  enabled_ = true;
  return true;
}

void ShmDir::close_all() {
  for (auto* v : {&in_, &out_}) {
    for (Region& r : *v) {
      if (r.fd >= 0) {
        ::close(r.fd);
        ::unlink(r.path.c_str());
        r.fd = -1;
      }
      r.map.reset();
    }
  }
  enabled_ = false;
}

bool ShmDir::view(const ShmDesc& d, ShmView& out, std::string& err) {
  if (!enabled_ || d.region >= in_.size()) {
    err = "shm region " + std::to_string(d.region) + " does not exist";
    return false;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  Region& r = in_[d.region];
  struct stat st;
  if (fstat(r.fd, &st) != 0) {
    err = std::string("shm region unreadable: ") + std::strerror(errno);
    return false;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (d.offset > size || d.length > size - d.offset) {
    err = "shm range " + std::to_string(d.offset) + "+" + std::to_string(d.length) + " is outside region " +
          std::to_string(d.region) + " (" + std::to_string(size) + " bytes)";
    return false;
  }
  if (d.length == 0) {
    out.map.reset();
    out.bytes = std::string_view();
    return true;
  }
  if (!r.map || r.map->size < d.offset + d.length) {
    // Mapped once per growth, populated: later bodies in the same pages cost no page faults.
    void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, r.fd, 0);
    if (p == MAP_FAILED) {
      err = std::string("cannot map shm region: ") + std::strerror(errno);
      return false;
    }
    auto m = std::make_shared<ShmMapping>();
    m->addr = static_cast<char*>(p);
    m->size = size;
    r.map = std::move(m);
  }
  out.map = r.map;
  out.bytes = std::string_view(r.map->addr + d.offset, d.length);
  return true;
}

bool ShmDir::put_parts(const std::string_view* parts, size_t nparts, ShmDesc& d) {
  if (!enabled_) return false;
  size_t total = 0;
  for (size_t i = 0; i < nparts; ++i) total += parts[i].size();
  Region* r = nullptr;
  uint32_t k = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (; k < out_.size(); ++k) {
      if (!out_[k].busy) {
        r = &out_[k];
        r->busy = true;
        break;
      }
    }
  }
  if (!r) return false;  // every region is in flight: this body takes the pipe
  // The region is ours until Erlang releases it (after it has read this frame), so its file and
  // mapping are changed here without the lock; only the table's flags need it.
  if (r->file_size < total) {
    if (ftruncate(r->fd, static_cast<off_t>(total)) != 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      r->busy = false;
      return false;
    }
    r->file_size = total;
  }
  if (!r->map || r->map->size < total) {
    void* p = mmap(nullptr, r->file_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (p == MAP_FAILED) {
      std::lock_guard<std::mutex> lock(mutex_);
      r->busy = false;
      return false;
    }
    auto m = std::make_shared<ShmMapping>();
    m->addr = static_cast<char*>(p);
    m->size = r->file_size;
    r->map = std::move(m);
  }
  // The one copy of a reply body on this path (encoded buffer, or a bytes object, -> region).
  size_t at = 0;
  for (size_t i = 0; i < nparts; ++i) {
    std::memcpy(r->map->addr + at, parts[i].data(), parts[i].size());
    at += parts[i].size();
  }
  d.region = k;
  d.offset = 0;
  d.length = total;
  return true;
}

bool ShmDir::trim_in(uint32_t k) {
  if (!enabled_ || k >= in_.size()) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  Region& r = in_[k];
  struct stat st;
  if (fstat(r.fd, &st) == 0 && static_cast<uint64_t>(st.st_size) > opts_.keep) {
    r.map.reset();  // a view still held keeps its own mapping; the next view maps anew
    (void)ftruncate(r.fd, 0);
  }
  return true;
}

bool ShmDir::release(uint32_t k) {
  if (!enabled_ || k >= out_.size()) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  Region& r = out_[k];
  if (!r.busy) return false;
  if (r.file_size > opts_.keep) {
    // One huge reply does not pin its pages: the next one grows the file again.
    r.map.reset();
    if (ftruncate(r.fd, 0) == 0) r.file_size = 0;
  }
  r.busy = false;
  return true;
}

int ShmDir::out_in_use() {
  std::lock_guard<std::mutex> lock(mutex_);
  int n = 0;
  for (const Region& r : out_) n += r.busy ? 1 : 0;
  return n;
}

bool ShmDir::inline_out(const std::string& frames, std::string& out) {
  if (!enabled_) return false;
  bool any = false;
  size_t pos = 0, plain_from = 0;
  // Bounded by the buffer: each step consumes one frame.
  while (pos + 4 + 16 <= frames.size()) {
    const char* f = frames.data() + pos;
    size_t len = static_cast<size_t>(be(f, 4));
    if (pos + 4 + len > frames.size() || len < 16) break;
    ShmDesc d;
    if ((static_cast<uint8_t>(f[5]) & kFlagShm) && parse_shm_desc(std::string_view(f + 20, len - 16), d)) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (d.region < out_.size() && out_[d.region].busy && out_[d.region].map &&
          d.offset + d.length <= out_[d.region].map->size && 16 + d.length <= 0xFFFFFFFFu) {
        if (!any) out.clear();
        out.append(frames, plain_from, pos - plain_from);
        put_be(out, 16 + d.length, 4);
        size_t at = out.size();
        out.append(f + 4, 16);
        out[at + 1] = static_cast<char>(static_cast<uint8_t>(f[5]) & ~kFlagShm);
        out.append(out_[d.region].map->addr + d.offset, d.length);
        plain_from = pos + 4 + len;
        any = true;
      }
    }
    pos += 4 + len;
  }
  if (any) out.append(frames, plain_from, std::string::npos);
  return any;
}

bool ShmDir::divert(const std::string& frames, std::string& scratch, std::vector<Piece>& pieces) {
  if (!enabled_ || frames.size() < opts_.threshold) return false;
  struct Span {
    bool in_scratch;
    size_t off, n;
  };
  std::vector<Span> spans;
  bool any = false;
  size_t pos = 0, plain_from = 0;
  while (pos + 4 + 16 <= frames.size()) {
    const char* f = frames.data() + pos;
    size_t len = static_cast<size_t>(be(f, 4));
    if (pos + 4 + len > frames.size() || len < 16) break;  // not ours to judge: written as it is
    uint8_t kind = static_cast<uint8_t>(f[4]);
    uint8_t flags = static_cast<uint8_t>(f[5]);
    uint32_t ctx = static_cast<uint32_t>(be(f + 8, 4));
    uint64_t id = be(f + 12, 8);
    std::string_view body(f + 20, len - 16);
    ShmDesc d;
    // ctx 0 with an id: an asyncio task's final frame (§3.10), which the owner routes raw to the
    // loop's worker. That process has no port to read a region of nor to release it to: a region
    // there would lose the outcome and stay in use for the port's life. Such frames take the pipe.
    if (diverted_kind(kind) && id != 0 && ctx != 0 && !(flags & kFlagShm) && body.size() >= opts_.threshold &&
        put(body, d)) {
      if (pos > plain_from) spans.push_back({false, plain_from, pos - plain_from});
      size_t at = scratch.size();
      put_be(scratch, 16 + kShmDescSize, 4);
      scratch.append(f + 4, 16);
      scratch[at + 4 + 1] = static_cast<char>(flags | kFlagShm);
      put_shm_desc(scratch, d);
      spans.push_back({true, at, scratch.size() - at});
      plain_from = pos + 4 + len;
      any = true;
    }
    pos += 4 + len;
  }
  if (!any) return false;
  if (frames.size() > plain_from) spans.push_back({false, plain_from, frames.size() - plain_from});
  for (const Span& s : spans) pieces.push_back({(s.in_scratch ? scratch.data() : frames.data()) + s.off, s.n});
  return true;
}

}  // namespace ep
