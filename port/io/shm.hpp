// Bulk bodies through shared memory (PROTOCOL.md §3.12).
//
// The Erlang side gives the port a directory private to the user (0700, the VM's own). At start-up the
// port creates there, with O_EXCL and mode 0600, `regions` files per direction: p<pid>.e<k> (Erlang writes
// a request body, the port reads it) and p<pid>.o<k> (the port writes a reply body, Erlang reads it). A
// frame whose header has the `shm` flag (0x02) carries instead of its body a 20-byte descriptor naming
// the region, an offset and a length. The files are reused from request to request: their pages stay
// allocated (tmpfs) and mapped here, so a 64 MiB body is neither faulted nor zeroed again. A region
// that grew past `keep` bytes is cut back to 0 when it is released, so one huge body does not pin its
// memory. The owner (py_port) deletes the files when the port exits, and start-up removes those of a VM
// that died (kill -9).
//
// Locking: ShmDir::mutex_ guards the region tables (free flags, mappings) of both directions. A view
// handed out holds its mapping (shared_ptr), so a remap never unmaps memory a reader still uses. The
// GIL is never needed here; in a free-threaded build mutex_ is still the one guard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace ep {

constexpr uint8_t kFlagShm = 0x02;     // header flag bit 1 (PROTOCOL.md §1.1, §3.12)
constexpr size_t kShmDescSize = 20;
constexpr uint8_t kKindShmRelease = 24;  // E->P shm_release: body Region, a non-negative integer
constexpr uint8_t kKindShmConsumed = 83;  // P->E shm_consumed: body Region (a request region read, §3.12)
// A descriptor: region:u32, offset:u64, length:u64, big-endian.

struct ShmDesc {
  uint32_t region = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Parses / writes the 20-byte descriptor body. parse: false unless exactly 20 bytes.
bool parse_shm_desc(std::string_view body, ShmDesc& d);
void put_shm_desc(std::string& out, const ShmDesc& d);

// One mapping of one region file; unmapped when the last holder lets go.
struct ShmMapping {
  char* addr = nullptr;
  size_t size = 0;
  ~ShmMapping();
};

// Read-only bytes of a request body in a region, valid while the object lives.
struct ShmView {
  std::shared_ptr<ShmMapping> map;
  std::string_view bytes;
};

struct ShmOptions {
  std::string dir;          // empty: shared memory off
  size_t threshold = 512 << 10;  // bodies this long or longer go through a region (P->E)
  int regions = 4;          // files per direction
  size_t keep = 128 << 20;  // a released region longer than this is truncated to 0
};

class ShmDir {
 public:
  // Creates the files; false (and nothing left behind) if any cannot be made: shared memory is off.
  bool open(const ShmOptions& opts, long pid);
  ~ShmDir() { close_all(); }
  // Closes and unlinks the files (the owner also deletes them when the port is gone); idempotent.
  void close_all();
  bool enabled() const { return enabled_; }
  size_t threshold() const { return opts_.threshold; }

  // E->P: the bytes a descriptor names in region d.region of the e-files. False with `err` when the
  // region does not exist or the range is outside the file (a protocol_error, never a crash).
  bool view(const ShmDesc& d, ShmView& out, std::string& err);

  // P->E: copies `body` into a free o-region; false if none is free or the file cannot grow (the
  // caller then sends the body on the pipe).
  bool put(std::string_view body, ShmDesc& d) { return put_parts(&body, 1, d); }
  // The same for a body in pieces (a codec header and the bytes of a Python object), copied in order.
  bool put_parts(const std::string_view* parts, size_t n, ShmDesc& d);
  // E->P, a callback_reply's region k (§3.12), after its body was copied out: cut back to 0 if it grew
  // past `keep` (the Erlang side hands it back to its pool without touching the file). False if k
  // names no request region.
  bool trim_in(uint32_t k);
  // P->E: Erlang has read region k (shm_release): it is free again (and cut back if over `keep`).
  // False if k names no region or one that is not in use.
  bool release(uint32_t k);
  // For tests and the bound: how many o-regions are in use.
  int out_in_use();
  // For the recorder (§3.12, record and replay): `frames` (whole frames, each with its 4-byte length)
  // into `out` with every frame that names one of our o-regions replaced by the same frame with its body
  // inline and the flag clear. False (out untouched) if no frame names one. Only before those frames
  // are written: until Erlang has them nobody releases their regions, so the bytes are still there.
  bool inline_out(const std::string& frames, std::string& out);

  // Rewrites `frames` (whole frames, back to back, each with its 4-byte length) into pieces to write:
  // every result/callback/stream_chunk frame with an id whose body is at least `threshold` long goes
  // into an o-region and is replaced by its header (flag shm) and descriptor, built in `scratch`. The
  // other frames are pointed to where they are (no copy). False if nothing was diverted.
  struct Piece {
    const char* p;
    size_t n;
  };
  bool divert(const std::string& frames, std::string& scratch, std::vector<Piece>& pieces);

 private:
  struct Region {
    int fd = -1;
    std::string path;
    std::shared_ptr<ShmMapping> map;
    size_t file_size = 0;  // o-regions: what we truncated it to
    bool busy = false;     // o-regions: written, not yet released
  };
  bool make(Region& r, const std::string& path);

  ShmOptions opts_;
  bool enabled_ = false;
  std::mutex mutex_;
  std::vector<Region> in_;   // e-files (Erlang writes)
  std::vector<Region> out_;  // o-files (the port writes)
};

}  // namespace ep
