"""Robust aggregation memory: the previous whole-array median / trimmed mean vs FireGrid's
slices, at several cohort sizes K, for a ~1M-parameter float32 model.

The previous rules decoded every diff and stacked them as float64 (then sorted a
copy): memory grows as K x model. The sliced rules read one slice of coordinates of
every diff at a time, by byte range, through the closing's own reader
(``services/stored_diffs.py``, here over a directory instead of a bucket): memory stays
flat in K. Both run in the same process on the same diff files and must agree.

    python -m bench.robust [--clients 10 25 50 100] [--params 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench._common import RESULTS, DirectoryBlobs, measure, reported, write_results
from firegrid.domain.aggregation import aggregate
from firegrid.domain.diffs import schema_of
from firegrid.services.stored_diffs import StoredDiffs
from firegrid.tensors import decode_state, encode_state

Delta = dict[str, np.ndarray]


def _write_diffs(directory: Path, clients: int, params: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = {"conv.weight": params // 10, "fc.weight": params - params // 10 - 10, "fc.bias": 10}
    model = {name: rng.normal(size=n).astype(np.float32) for name, n in sizes.items()}
    for k in range(clients):
        diff = {name: rng.normal(size=v.shape).astype(np.float32) for name, v in model.items()}
        (directory / f"{k}.safetensors").write_bytes(encode_state(diff))
    return model


def _whole_array(directory: Path, clients: int, model: dict, method: str, trim: float) -> Delta:
    """The rules as they were: every diff decoded, stacked as float64, reduced at once."""
    diffs = [decode_state((directory / f"{k}.safetensors").read_bytes()) for k in range(clients)]
    stacked = {name: np.stack([d[name].astype(np.float64) for d in diffs]) for name in model}
    if method == "median":
        return {name: np.median(values, axis=0) for name, values in stacked.items()}
    cut = int(trim * clients)
    return {
        name: np.sort(values, axis=0)[cut : clients - cut].mean(axis=0)
        for name, values in stacked.items()
    }


def _sliced(directory: Path, clients: int, model: dict, method: str, trim: float) -> Delta:
    names = [f"{k}.safetensors" for k in range(clients)]
    blobs = DirectoryBlobs(directory)
    diffs = StoredDiffs(blobs, schema_of(model), reported(names), [1.0] * clients, {})
    return aggregate(model, diffs, method=method, trim_fraction=trim)[1].delta


def _compare(directory: Path, clients: int, model: dict, method: str, trim: float) -> dict:
    whole, whole_s, whole_mib = measure(
        lambda: _whole_array(directory, clients, model, method, trim)
    )
    sliced, sliced_s, sliced_mib = measure(lambda: _sliced(directory, clients, model, method, trim))
    for name in model:
        np.testing.assert_allclose(sliced[name], whole[name], rtol=1e-12)
    return {
        "method": method,
        "clients": clients,
        "whole_mib": round(whole_mib, 1),
        "sliced_mib": round(sliced_mib, 1),
        "ratio": round(whole_mib / sliced_mib, 1),
        "whole_s": round(whole_s, 2),
        "sliced_s": round(sliced_s, 2),
    }


COLUMNS = ("method", "clients", "whole_mib", "sliced_mib", "ratio", "whole_s", "sliced_s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--trim", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=RESULTS / "robust.json")
    args = parser.parse_args()
    print(f"model: {args.params:,} float32 parameters ({args.params * 4 / 2**20:.1f} MiB)")
    print("".join(f"{c:>13}" for c in COLUMNS))
    rows = []
    for clients in args.clients:
        with tempfile.TemporaryDirectory() as tmp:
            model = _write_diffs(Path(tmp), clients, args.params)
            for method in ("median", "trimmed_mean"):
                rows.append(_compare(Path(tmp), clients, model, method, args.trim))
                print("".join(f"{rows[-1][c]:>13}" for c in COLUMNS))
    print("sliced and whole-array results agree (rtol 1e-12)")
    write_results(args.out, {"params": args.params, "rows": rows})


if __name__ == "__main__":
    main()
