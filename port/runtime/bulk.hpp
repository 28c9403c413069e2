// bulk (PROTOCOL.md §3.12 and "Decoding big terms fast"): what the runtime adds around a request body.
//
// The copies of a 64 MiB bytes argument on its way from Erlang to Python and back (py:eval(<<"b">>,
// #{b => {bytes, B}})), per path:
//   pipe (9): term_to_binary (VM) -> the pipe (kernel) -> main.cpp's read buffer (kernel) ->
//          FrameReader's frame string (memcpy; the string is then moved, never copied, into the
//          context's queue) -> the decoder's PyBytes (the object Python owns) -> the encoder's reply
//          string -> the pipe (kernel) -> the VM's packet binary (kernel) -> binary_to_term's copy.
//   shm (4): the caller's pwrite of term_to_iovec's pieces (the big binary is referenced, not copied)
//          into a request region -> the decoder's PyBytes, straight from the mapped region (no read
//          buffer, no frame string) -> a reply region, straight from the bytes object
//          (shm_bytes_result: no reply string) -> the caller's pread; py_shm's reader makes the big
//          binary a sub-binary of what pread returned (no binary_to_term copy; msgpack's reader does
//          the same). No pipe wake-ups in either direction.
//   Left, for other reply values: the reply string -> region copy (an encoder writing into the
//   mapping would remove it); on the pipe path, the read buffer -> frame string copy (reading straight
//   into the frame would). PyBytes and the pread are the two sides' own objects.
// Removed here: the decode no longer runs the cyclic GC over the objects it is creating (GcPause), and
// a context's reply string no longer keeps the capacity of its largest reply (shrink_reply).
#pragma once

#include <Python.h>

#include <string>

#include "codec.hpp"
#include "shm.hpp"

namespace ep {

// Bodies at least this long are decoded with the cyclic GC paused: every container a decode makes is
// tracked, so a million small lists trigger thousands of generation-0 collections that find nothing
// (all are reachable from the value being built). Smaller bodies are left alone (no cost on the
// latency path).
constexpr size_t kGcPauseMin = 64 << 10;

// GIL held. Pauses the cyclic GC for its lifetime if it was enabled. Several threads may overlap (the
// GC switch is the interpreter's): only one that found it enabled turns it back on, so it ends
// enabled as it started; a gc.disable() by Python code during a decode is undone by it (documented).
class GcPause {
 public:
  explicit GcPause(size_t body_size) {
#if PY_VERSION_HEX >= 0x030A0000
    if (body_size >= kGcPauseMin) was_enabled_ = PyGC_Disable() != 0;
#else
    (void)body_size;
#endif
  }
  ~GcPause() {
#if PY_VERSION_HEX >= 0x030A0000
    if (was_enabled_) PyGC_Enable();
#endif
  }
  GcPause(const GcPause&) = delete;
  GcPause& operator=(const GcPause&) = delete;

 private:
  bool was_enabled_ = false;
};

// A context's reply buffer after it was written: kept for the next reply when small, freed when a big
// reply made it big (so a port does not hold its largest reply's size forever).
constexpr size_t kReplyKeep = 1 << 20;
inline void shrink_reply(std::string& out) {
  if (out.capacity() > kReplyKeep) std::string().swap(out);
  else out.clear();
}

// GIL held. A result that is one bytes object whose body would be at least the shm threshold: its codec
// header and its bytes go straight into a reply region (the encoded copy is skipped: the copies of the
// commonest bulk reply go from five to four), and `out` gets the shm result frame. False: another value,
// or no free region (the caller encodes it as usual; Output may still divert the encoded frame).
bool shm_bytes_result(ShmDir* shm, CodecKind codec, std::string& out, uint32_t ctx, uint64_t id, PyObject* value);

}  // namespace ep
