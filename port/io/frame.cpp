#include "frame.hpp"

namespace ep {

Header parse_header(const char* p) {
  Header h;
  h.kind = static_cast<uint8_t>(p[0]);
  h.flags = static_cast<uint8_t>(p[1]);
  h.reserved = static_cast<uint16_t>(be(p + 2, 2));
  h.ctx = static_cast<uint32_t>(be(p + 4, 4));
  h.id = be(p + 8, 8);
  return h;
}

size_t begin_frame(std::string& out, const Header& h) {
  size_t start = out.size();
  out.append(4, '\0');
  out.push_back(static_cast<char>(h.kind));
  out.push_back(static_cast<char>(h.flags));
  put_be(out, h.reserved, 2);
  put_be(out, h.ctx, 4);
  put_be(out, h.id, 8);
  return start;
}

void finish_frame(std::string& out, size_t start) {
  uint64_t len = out.size() - start - 4;
  for (int i = 0; i < 4; ++i) out[start + i] = static_cast<char>((len >> (8 * (3 - i))) & 0xff);
}

}  // namespace ep
