#!/usr/bin/env bash
# Regenerates the seed corpora from the golden vectors (protocol/vectors): etf/ and msgpack/ get each
# vector's body, frame/ gets each ETF body as a whole frame (a max_frame byte, the length, a call
# header, the body), plus a few frames of edge lengths. Run from anywhere; commit the result.
set -euo pipefail
cd "$(dirname "$0")"
vec=../../protocol/vectors
mkdir -p corpus/etf corpus/msgpack corpus/frame  # regress_* seeds (crashes found) are kept
while read -r name _; do
  case "$name" in ''|'#'*) continue ;; esac
  cp "$vec/$name.etf" "corpus/etf/$name"
  cp "$vec/$name.msgpack" "corpus/msgpack/$name"
  python3 - "$vec/$name.etf" "corpus/frame/$name" <<'PY'
import struct, sys
body = open(sys.argv[1], 'rb').read()
header = bytes([1, 0, 0, 0]) + struct.pack('>IQ', 1, 42)
frame = header + body
open(sys.argv[2], 'wb').write(bytes([63]) + struct.pack('>I', len(frame)) + frame)
PY
done < "$vec/MANIFEST"
python3 - <<'PY'
import struct
edge = {
    'empty_frames': bytes([0]) + struct.pack('>I', 0) * 3,
    'header_only': bytes([0]) + struct.pack('>I', 16) + bytes(16),
    'oversized_then_small': bytes([0]) + struct.pack('>I', 200) + bytes(200) + struct.pack('>I', 16) + bytes(16),
    'split_length': bytes([5]) + struct.pack('>I', 20) + bytes(20) + b'\x00\x00',
}
for k, v in edge.items():
    open('corpus/frame/' + k, 'wb').write(v)
PY
echo "corpus: $(ls corpus/etf | wc -l) etf, $(ls corpus/msgpack | wc -l) msgpack, $(ls corpus/frame | wc -l) frame"
