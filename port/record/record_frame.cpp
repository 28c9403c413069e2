// The `record` frame (PROTOCOL.md §3.13): starts or stops recording this port at run time.
//   {start, Path, MaxBytes} -> result ok | error {<<"OSError">>, Message, <<>>}
//   stop                    -> result ok
#include "recorder.hpp"
#include "runtime.hpp"

namespace ep {

void Runtime::on_record(const Header& h, std::string payload) {
  auto frame = std::make_shared<std::string>(std::move(payload));
  control_->post([this, h, frame] {
    std::string out, path, err;
    uint64_t max_bytes = 0;
    enum { Bad, Start, Stop } what = Bad;
    {
      GilGuard gil;
      PyRef body = decode(std::string_view(*frame).substr(kHeaderSize), err);
      PyObject* b = body.get();
      if (b && PyUnicode_Check(b) && PyUnicode_CompareWithASCIIString(b, "stop") == 0) {
        what = Stop;
      } else if (b && PyTuple_Check(b) && PyTuple_GET_SIZE(b) == 3 && PyUnicode_Check(PyTuple_GET_ITEM(b, 0)) &&
                 PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(b, 0), "start") == 0 &&
                 PyUnicode_Check(PyTuple_GET_ITEM(b, 1)) && PyLong_Check(PyTuple_GET_ITEM(b, 2))) {
        const char* p = PyUnicode_AsUTF8(PyTuple_GET_ITEM(b, 1));
        long long m = PyLong_AsLongLong(PyTuple_GET_ITEM(b, 2));
        if (p && m >= 0) {
          path = p;
          max_bytes = static_cast<uint64_t>(m);
          what = Start;
        }
      }
      if (PyErr_Occurred()) PyErr_Clear();
    }
    if (what == Bad) {
      protocol_error_frame(out, h.ctx, h.id, "bad_shape", "expected {start, Path, MaxBytes} or stop");
    } else if (what == Stop) {
      recorder().stop(1);
      ok_frame(out, h.ctx, h.id);
    } else if (recorder().start(path, max_bytes, opts_.codec == CodecKind::Etf ? 0 : 1, err)) {
      ok_frame(out, h.ctx, h.id);
    } else {
      error_frame(out, h.ctx, h.id, "OSError", err, "");
    }
    out_.write(out);
  });
}

}  // namespace ep
