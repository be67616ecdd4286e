"""Two runs of the same pipeline in different directories must give byte-identical outputs (determinism check).

Compares metrics/eval.json, the synthetic and labeled question files and every checkpoint weight file by sha256;
prints each fingerprint and exits non-zero naming the files that differ.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

FILES = ["metrics/eval.json", "data/synthetic/questions.jsonl", "data/labeled/synthetic.jsonl"]


def fingerprints(root: Path) -> dict[str, str]:
    names = FILES + sorted(str(p.relative_to(root)) for p in root.glob("checkpoints/**/*.safetensors"))
    out = {}
    for name in names:
        path = root / name
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
    return out


def main(a: str, b: str) -> int:
    fa, fb = fingerprints(Path(a)), fingerprints(Path(b))
    weights = [n for n in fa if n.endswith(".safetensors")]
    if not weights:
        print(f"[same-outputs] no checkpoint weights under {a}/checkpoints", file=sys.stderr)
        return 1
    differ = [n for n in sorted(set(fa) | set(fb)) if fa.get(n) != fb.get(n) or fa.get(n) == "missing"]
    for n in sorted(set(fa) | set(fb)):
        print(f"[same-outputs] {fa.get(n, 'missing')[:16]} {fb.get(n, 'missing')[:16]} {n}")
    if differ:
        print(f"[same-outputs] FAIL: {len(differ)} file(s) differ or are missing between {a} and {b}: {differ}", file=sys.stderr)
        return 1
    print(f"[same-outputs] {len(fa)} files byte-identical across the two directories ({len(weights)} weight files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
