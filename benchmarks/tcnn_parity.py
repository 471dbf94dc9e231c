"""Check that the pure-torch hash tri-plane matches tinycudann's HashGrid on the same tables.

Needs CUDA and tinycudann (neither machine this project is tested on has tinycudann today, so this
is a script to run where it is installed, not a test):

    python benchmarks/tcnn_parity.py
"""

from __future__ import annotations

import sys

import torch

from gstalker_ns.fields import HashTriplane, tcnn_available


def main() -> int:
    if not (tcnn_available() and torch.cuda.is_available()):
        print("tcnn_parity: needs tinycudann and a CUDA GPU; nothing to compare here")
        return 2
    tri = HashTriplane(implementation="tcnn").cuda()
    for grid in tri.grids:
        with torch.no_grad():
            grid.params.uniform_(-1, 1)
    xyz = torch.rand(4096, 3, device="cuda")
    out_tcnn = tri(xyz)
    tri.implementation = "torch"
    out_torch = tri(xyz)
    diff = (out_tcnn.float() - out_torch).abs()
    print(f"tcnn vs torch hash tri-plane: max abs diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}")
    return 0 if diff.max().item() < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
