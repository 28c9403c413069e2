// libFuzzer harness: the msgpack body decoder (port/codec/msgpack_codec.cpp). tools/fuzz.sh runs it.
#include "fuzz_decode.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ep_fuzz::decode_one<ep::MsgpackWriter>(ep::CodecKind::Msgpack, data, size);
  return 0;
}
