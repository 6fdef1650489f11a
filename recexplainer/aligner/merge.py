"""Write a standalone model folder from a trained aligner: LoRA merged into the base weights, plus projectors.

    python -m recexplainer.aligner.merge <artifacts>/aligner/<key> <out_dir>

The merged folder loads with plain ``AutoModelForCausalLM.from_pretrained``; ``setup.load(out_dir)``
rebuilds the full RecExplainer model from it (no adapter, no base-model download).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from recexplainer.aligner import setup
from recexplainer.artifacts import write_json


def merge(folder: Path, out_dir: Path, assets_cache: str | None = None) -> Path:
    model, tokenizer, _ = setup.load(folder, assets_cache)
    merged = model.lm.merge_and_unload()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "llm").mkdir(parents=True)
    merged.save_pretrained(str(tmp / "llm"))
    tokenizer.save_pretrained(str(tmp / "llm"))
    shutil.copy2(folder / "projectors.safetensors", tmp / "projectors.safetensors")
    spec = json.loads((folder / "aligner.json").read_text())
    spec["llm"] = {**spec["llm"], "source": "pretrained", "path": str((out_dir / "llm").resolve())}
    spec["merged_from"] = str(folder.resolve())
    write_json(tmp / "aligner.json", spec)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recexplainer.aligner.merge", description=__doc__.split("\n")[0]
    )
    parser.add_argument("aligner_folder", type=Path, help="an aligner stage folder (holds aligner.json)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--assets", default=None, help="offline asset cache (default: $RECEXPLAINER_CACHE)")
    args = parser.parse_args(argv)
    if not (args.aligner_folder / "aligner.json").is_file():
        print(f"error: {args.aligner_folder} is not an aligner folder (no aligner.json)", file=sys.stderr)
        return 2
    print(merge(args.aligner_folder, args.out_dir, args.assets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
