"""models.backends: each backend against torch fp32 on the real small checkpoint; the ONNX cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.backends import (
    Backend,
    BackendError,
    cpu_flags,
    resolve_backend,
    sensitive_matmuls,
    unsigned_int8_weights,
)
from models.runner import ModelLoadError, RunnerOptions, SentimentRunner

pytestmark = pytest.mark.slow

MINILM = Path(__file__).resolve().parents[2].parent / "shared/models/sentiment-minilm-sst2"
SST2_DEV = MINILM.parent.parent / "data" / "sst2" / "glue_dev.tsv"
CPU_BACKENDS = ["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"]

CLEAR = [
    ("I absolutely love this, best day ever!", "POSITIVE"),
    ("What a wonderful, charming film with a brilliant cast.", "POSITIVE"),
    ("This is terrible, I hate it.", "NEGATIVE"),
    ("Dull plot, wooden acting, awful ending: a waste of two hours.", "NEGATIVE"),
]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the project checkout")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def runners(cache_dir: Path) -> dict[str, SentimentRunner]:
    return {
        backend: SentimentRunner(
            str(require(MINILM)),
            RunnerOptions(device="cpu", backend=backend, cache_dir=cache_dir, torch_threads=2),
        )
        for backend in CPU_BACKENDS
    }


@pytest.fixture(scope="module")
def sst2_dev() -> list[tuple[str, str]]:
    rows = require(SST2_DEV).read_text(encoding="utf-8").splitlines()[1:]
    pairs = [row.rsplit("\t", 1) for row in rows if row.strip()]
    return [(text, "POSITIVE" if label == "1" else "NEGATIVE") for text, label in pairs]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("text", "label"), CLEAR)
def test_every_cpu_backend_gets_clear_sentiment_right(
    runners: dict[str, SentimentRunner], backend: str, text: str, label: str
) -> None:
    (prediction,) = runners[backend].predict([text]).predictions
    assert prediction.label == label
    assert runners[backend].backend == backend


def test_onnx_fp32_matches_torch_fp32_probabilities(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]]
) -> None:
    texts = [text for text, _ in sst2_dev[:200]]
    reference = runners["torch-fp32"].predict(texts).predictions
    onnx = runners["onnx-fp32"].predict(texts).predictions
    for ours, theirs in zip(onnx, reference, strict=True):
        assert ours.label == theirs.label
        assert ours.score == pytest.approx(theirs.score, abs=1e-4)


def test_onnx_int8_keeps_labels_and_accuracy_on_sst2_dev(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]]
) -> None:
    """The issue's bar for an int8 default: >= 99% agreement, accuracy within 0.5 points."""
    texts = [text for text, _ in sst2_dev]
    gold = [label for _, label in sst2_dev]
    fp32 = [p.label for p in runners["torch-fp32"].predict(texts).predictions]
    int8 = [p.label for p in runners["onnx-int8"].predict(texts).predictions]
    agreement = sum(a == b for a, b in zip(fp32, int8, strict=True)) / len(texts)
    accuracy_fp32 = sum(a == g for a, g in zip(fp32, gold, strict=True)) / len(texts)
    accuracy_int8 = sum(a == g for a, g in zip(int8, gold, strict=True)) / len(texts)
    assert agreement >= 0.99
    assert accuracy_int8 >= accuracy_fp32 - 0.005


def test_int8_weights_are_unsigned_only_on_cpus_without_vnni(tmp_path: Path) -> None:
    assert unsigned_int8_weights(frozenset({"avx2", "fma"}))
    assert not unsigned_int8_weights(frozenset({"avx2", "avx512_vnni"}))
    assert not unsigned_int8_weights(frozenset({"avx2", "avx_vnni"}))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse2", "avx2", "avx512_vnni"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_onnx_export_is_cached_by_weights_and_reused(
    runners: dict[str, SentimentRunner], cache_dir: Path, tmp_path: Path
) -> None:
    exports = sorted((cache_dir / "onnx").glob("*/model.*.onnx"))
    int8_name = "model.int8-u8.onnx" if unsigned_int8_weights(cpu_flags()) else "model.int8.onnx"
    assert sorted(path.name for path in exports) == sorted(["model.fp32.onnx", int8_name])
    stamps = {path: path.stat().st_mtime_ns for path in exports}
    SentimentRunner(str(MINILM), RunnerOptions(backend="onnx-int8", cache_dir=cache_dir))
    assert {path: path.stat().st_mtime_ns for path in exports} == stamps, "re-exported"

    # Other weights (same architecture) get their own export.
    changed = tmp_path / "changed"
    shutil.copytree(MINILM, changed)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(changed)
    with torch.no_grad():
        model.classifier.bias += 0.5
    model.save_pretrained(changed)
    SentimentRunner(str(changed), RunnerOptions(backend="onnx-fp32", cache_dir=cache_dir))
    assert len(list((cache_dir / "onnx").iterdir())) == 2


def test_int8_keeps_the_first_third_of_feed_forward_blocks_in_fp32(cache_dir: Path) -> None:
    import onnx

    fp32 = next((cache_dir / "onnx").glob("*/model.fp32.onnx"))  # any: same architecture
    kept = sensitive_matmuls(onnx.load(str(fp32)).graph)
    # MiniLM-L6: 6 layers -> layers 0 and 1, each with its two feed-forward MatMuls.
    assert len(kept) == 4
    assert all("layer.0/" in name or "layer.1/" in name for name in kept)
    assert sum("intermediate" in name for name in kept) == 2


def test_auto_backend_is_the_measured_default_for_the_device() -> None:
    expected = Backend.CUDA_FP16 if torch.cuda.is_available() else Backend.ONNX_INT8
    assert resolve_backend("auto", "auto") == expected
    assert resolve_backend("auto", "cpu") == Backend.ONNX_INT8


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="is not one of"):
        resolve_backend("tensorrt", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_backend_without_cuda_names_the_setting() -> None:
    with pytest.raises(ModelLoadError, match="SENTISTREAM_BACKEND=cuda-fp16 needs a CUDA device"):
        SentimentRunner(str(MINILM), RunnerOptions(backend="cuda-fp16"))


@pytest.mark.gpu
def test_cuda_fp16_agrees_with_cpu_fp32(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]]
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (the gpu marker runs on GPU machines)")
    cuda = SentimentRunner(str(MINILM), RunnerOptions(backend="cuda-fp16"))
    texts = [text for text, _ in sst2_dev]
    fp32 = runners["torch-fp32"].predict(texts).predictions
    fp16 = cuda.predict(texts).predictions
    agreement = sum(a.label == b.label for a, b in zip(fp32, fp16, strict=True)) / len(texts)
    assert agreement >= 0.995
    assert cuda.device.startswith("cuda")
