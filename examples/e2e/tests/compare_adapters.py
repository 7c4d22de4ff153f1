"""Two adapter_model.safetensors files hold the same tensors to `tolerance` relative (argv: A B
LABEL [TOLERANCE]). Read with json + numpy, not with the library under test; run by the
torchrun launch tests with the Python that the machine's torchrun uses."""
import json
import struct
import sys

import numpy as np


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (path, name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out


one, two = read(sys.argv[1]), read(sys.argv[2])
label = sys.argv[3]
tolerance = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-5
assert one, "no tensors in " + sys.argv[1]
assert sorted(one) == sorted(two), (sorted(one), sorted(two))
worst = max(np.abs(one[k] - two[k]).max() / max(np.abs(one[k]).max(), 1e-300) for k in one)
moved = max(np.abs(one[k]).max() for k in one if "lora_B" in k)
print(f"{label}: {len(one)} tensors, worst relative difference {worst:.3g}")
assert moved > 0, "B never moved from zero: the runs trained nothing"
assert worst < tolerance, worst
