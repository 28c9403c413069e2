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
//   callback replies (the value an Erlang function returns to erlang.call, shm path, 4): the helper's
//          pwrite into a request region -> take_shm_reply's string, on the loop thread (why there:
//          see it) -> the decoder's objects -> the waiting thread. The pipe path has the pipe's
//          copies (VM -> kernel -> read buffer -> frame string) in place of the first two.
//   Page faults: a big bytes object is fresh anonymous memory when the allocator has none to reuse;
//          big_bytes (codec/big_bytes.hpp) asks for huge pages before the copy touches it (the copy
//          into fresh 4 KiB pages took 40 ms for 64 MiB, into huge pages 18 ms) and copies without
//          the GIL. The regions are files reused from request to request and stay mapped, so their
//          pages are faulted once. The VM's pread allocates the reply binary: its allocator reuses a
//          freed segment when it has one (then no faults), else maps a fresh one (about +20 ms for
//          64 MiB); nothing on our side changes that.
//   Where the time goes (64 MiB echo, measured with strace -T and perf on the 2-core machine): the
//          VM's pwrite 20 ms, the port's two copies and the eval 27 ms, the VM's pread 18 ms. The
//          kernel's tmpfs read and write paths look up and lock every 4 KiB page (filemap_get_entry,
//          folio_unlock: a third of the pread), which huge tmpfs pages would remove; they are off on
//          this machine (shmem_enabled = never), and a NIF-free VM has no way around the two syscalls.
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

// Loop thread, no GIL. `frame` (header + body) is a callback_reply with the shm flag (§3.12): it is
// rewritten into the frame the pipe would have carried (flag cleared, the body copied out of the
// request region; the waiting thread decodes that string as it decodes a reply from the pipe), and
// `out` gets the shm_consumed frame (P->E 83) that hands the region back, cut back to 0 first when it
// grew past `keep`. Why a copy here rather than decoding from the region in the waiting thread: a
// reply travels as a string through several hands (a waiter cancelled meanwhile, an outer wait's
// early reply, a thread outside any context), and each would have to hand the region back; copied
// here, the region is back before any of them sees the reply. A descriptor the port cannot read:
// the body becomes {error, <<"error">>, Why} (the waiting erlang.call raises erlang.ErlangError
// instead of hanging), `why` says what for a protocol_error, and a region it names is handed back
// all the same.
void take_shm_reply(ShmDir* shm, CodecKind codec, std::string& frame, std::string& out, std::string& why);

}  // namespace ep
