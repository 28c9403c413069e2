#include "bulk.hpp"

#include <algorithm>

#include "frame.hpp"
#include "shm.hpp"
#include "py_ref.hpp"

namespace ep {

bool shm_bytes_result(ShmDir* shm, CodecKind codec, std::string& out, uint32_t ctx, uint64_t id, PyObject* value) {
  // ctx 0: a task's outcome (§3.10), which must take the pipe (ShmDir::divert says why).
  if (!shm || !shm->enabled() || ctx == 0 || !PyBytes_CheckExact(value)) return false;
  const size_t n = static_cast<size_t>(PyBytes_GET_SIZE(value));
  if (n > 0xFFFFFFFFu) return false;  // the codecs refuse it; the encoder says so
  // The header the encoder would write for this one value, byte for byte: ETF 131, BINARY_EXT, length;
  // msgpack bin8/16/32 by length (a small threshold makes the short forms reachable).
  std::string head;
  auto be = [&](uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) head.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  if (codec == CodecKind::Etf) {
    head.push_back(static_cast<char>(131));
    head.push_back(static_cast<char>(109));
    be(n, 4);
  } else if (n <= 0xff) {
    head.push_back(static_cast<char>(0xc4));
    be(n, 1);
  } else if (n <= 0xffff) {
    head.push_back(static_cast<char>(0xc5));
    be(n, 2);
  } else {
    head.push_back(static_cast<char>(0xc6));
    be(n, 4);
  }
  if (head.size() + n < shm->threshold()) return false;
  const std::string_view parts[2] = {head, std::string_view(PyBytes_AS_STRING(value), n)};
  ShmDesc d;
  bool put;
  {
    // bytes are immutable and the caller holds the object: the copy needs no GIL.
    GilRelease unlocked;
    put = shm->put_parts(parts, 2, d);
  }
  if (!put) return false;
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), kFlagShm, 0, ctx, id});
  put_shm_desc(out, d);
  finish_frame(out, start);
  return true;
}

namespace {
template <class F>
void write_with(CodecKind codec, std::string& out, F&& f) {
  if (codec == CodecKind::Etf) {
    EtfWriter w(out);
    w.version();
    f(w);
  } else {
    MsgpackWriter w(out);
    f(w);
  }
}
}  // namespace

void take_shm_reply(ShmDir* shm, CodecKind codec, std::string& frame, std::string& out, std::string& why) {
  ShmDesc d;
  ShmView v;
  bool named = frame.size() >= kHeaderSize && parse_shm_desc(std::string_view(frame).substr(kHeaderSize), d);
  if (!shm || !named) why = "a shm frame's body must be a 20-byte descriptor";
  else shm->view(d, v, why);
  std::string inlined = frame.substr(0, std::min(frame.size(), kHeaderSize));
  inlined.resize(kHeaderSize, '\0');
  inlined[1] = static_cast<char>(static_cast<uint8_t>(inlined[1]) & ~kFlagShm);
  if (why.empty()) {
    inlined.append(v.bytes);  // the one copy of the body in the port (see above)
  } else {
    write_with(codec, inlined, [&](auto& w) {
      w.tuple(3);
      w.atom("error");
      w.str("error");
      w.str("the reply in shared memory cannot be read: " + why);
    });
  }
  v = ShmView();
  frame.swap(inlined);
  if (shm && named && shm->trim_in(d.region)) {
    size_t start = begin_frame(out, Header{kKindShmConsumed, 0, 0, 0, 0});
    write_with(codec, out, [&](auto& w) { w.integer(static_cast<int64_t>(d.region)); });
    finish_frame(out, start);
  }
}

}  // namespace ep
