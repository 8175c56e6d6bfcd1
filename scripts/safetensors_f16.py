"""Rewrites a safetensors file with every F32 tensor stored as F16 (standard library only).

Used by scripts/gpu-bundle.sh to halve a model for the trip to a GPU machine. crosstrain
upcasts F16 weights to f32 when it loads them, so CPU and GPU read the same rounded weights.
"""

import json
import struct
import sys
from array import array


def main(source: str, target: str) -> None:
    with open(source, "rb") as f:
        header_length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_length))
        payload = f.read()
    metadata = header.pop("__metadata__", None)
    out_header, chunks, offset = {}, [], 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        raw = payload[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            values = array("f")
            values.frombytes(raw)
            raw = struct.pack(f"<{len(values)}e", *values)
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"],
                            "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata is not None:
        out_header["__metadata__"] = metadata
    encoded = json.dumps(out_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
