// libFuzzer harness: the ETF body decoder (port/codec/etf_codec.cpp). tools/fuzz.sh runs it.
#include "fuzz_decode.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ep_fuzz::decode_one<ep::EtfWriter>(ep::CodecKind::Etf, data, size);
  return 0;
}
