// bulk (PROTOCOL.md §3.12 and "Decoding big terms fast"): what the runtime adds around a request body.
//
// The copies of a 64 MiB argument on its way from Erlang to Python and back, per path:
//   pipe (9): term_to_binary (VM) -> the pipe (kernel) -> main.cpp's read buffer (kernel) ->
//          FrameReader's frame string (memcpy; the string is then moved, never copied, into the
//          context's queue) -> the decoder's PyBytes (the object Python owns) -> the encoder's reply
//          string -> the pipe (kernel) -> the VM's packet binary (kernel) -> binary_to_term's copy.
//   shm (6): the caller's pwrite of term_to_iovec's pieces (the big binary is referenced, not copied)
//          into a region -> the decoder's PyBytes, straight from the mapped region (no read buffer, no
//          frame string) -> the encoder's reply string -> the region (ShmDir::put) -> the caller's
//          pread -> binary_to_term's copy. No pipe wake-ups in either direction.
//   The ones left need not all exist: the reply string -> region copy goes with an encoder that
//   writes into the mapping, the read buffer -> frame string copy with reading straight into the
//   frame (the pipe path); PyBytes and binary_to_term's copies are the two sides' own objects.
// Removed here: the decode no longer runs the cyclic GC over the objects it is creating (GcPause), and
// a context's reply string no longer keeps the capacity of its largest reply (shrink_reply).
#pragma once

#include <Python.h>

#include <string>

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

}  // namespace ep
