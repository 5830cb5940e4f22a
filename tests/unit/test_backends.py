"""models.backends: each backend against torch fp32 on the real small checkpoint; the ONNX cache."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from models.backends import (
    Backend,
    BackendError,
    cpu_flags,
    flags_with_bf16,
    fused_operator_counts,
    resolve_backend,
    sensitive_matmuls,
    unsigned_int8_weights,
)
from models.runner import ModelLoadError, RunnerOptions, SentimentRunner

pytestmark = pytest.mark.slow

MINILM = Path(__file__).resolve().parents[2].parent / "shared/models/sentiment-minilm-sst2"
SST2_DEV = MINILM.parent.parent / "data" / "sst2" / "glue_dev.tsv"
CPU_BACKENDS = [
    "torch-fp32",
    "torch-int8",
    "torch-bf16",
    "onnx-fp32",
    "onnx-int8",
    "onnx-fused-fp32",
    "onnx-fused-int8",
]

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


def onnx_int8_in_lanes(cache_dir: Path, lanes: int) -> SentimentRunner:
    return SentimentRunner(
        str(require(MINILM)),
        RunnerOptions(
            device="cpu", backend="onnx-int8", cache_dir=cache_dir, torch_threads=2, lanes=lanes,
            max_batch_size=4,
        ),
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_lanes(cache_dir: Path) -> SentimentRunner:
    return onnx_int8_in_lanes(cache_dir, 2)


def test_two_lanes_run_a_takes_passes_side_by_side(
    two_lanes: SentimentRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    lane_forward = two_lanes.lane_forward
    together = threading.Barrier(2, timeout=30)  # only passes that run at once get through
    lanes = set()

    def meet_then_forward(inputs: Any) -> Any:
        together.wait()
        lanes.add(threading.current_thread().name)
        return lane_forward(inputs)

    monkeypatch.setattr(two_lanes, "lane_forward", meet_then_forward)
    texts = [f"review number {i} was fine" for i in range(8)]  # equal lengths: two passes of 4
    assert two_lanes.predict(texts).forward_sizes == (4, 4)
    assert len(lanes) == 2


def test_a_lone_pass_runs_on_every_thread_not_on_a_lane(
    two_lanes: SentimentRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lane(inputs: Any) -> Any:
        raise AssertionError("a take of one pass went to a lane")

    monkeypatch.setattr(two_lanes, "lane_forward", no_lane)
    assert two_lanes.predict(["good", "bad", "fine"]).forward_batches == 1


def test_onnx_int8_in_two_lanes_scores_as_in_one(
    sst2_dev: list[tuple[str, str]], two_lanes: SentimentRunner, cache_dir: Path
) -> None:
    """Two lanes of one intra-op thread each give the same answers as one lane of two (int8
    quantizes activations per pass, so both cut the texts into the same passes)."""
    one_lane = onnx_int8_in_lanes(cache_dir, 1)
    texts = [text for text, _ in sst2_dev[:200]]
    two_lanes.forward_cost.forget()
    one_lane.forward_cost.forget()
    scored = two_lanes.predict(texts)
    expected = one_lane.predict(texts)
    assert scored.forward_sizes == expected.forward_sizes
    assert len(scored.forward_sizes) > 1
    for got, want in zip(scored.predictions, expected.predictions, strict=True):
        assert got.label == want.label
        assert got.score == pytest.approx(want.score, abs=1e-6)


@pytest.mark.parametrize("backend", ["onnx-fp32", "onnx-fused-fp32"])
def test_onnx_fp32_matches_torch_fp32_probabilities(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]], backend: str
) -> None:
    texts = [text for text, _ in sst2_dev[:200]]
    reference = runners["torch-fp32"].predict(texts).predictions
    onnx = runners[backend].predict(texts).predictions
    for ours, theirs in zip(onnx, reference, strict=True):
        assert ours.label == theirs.label
        assert ours.score == pytest.approx(theirs.score, abs=1e-4)


def test_fused_graphs_hold_the_fused_transformer_operators(
    runners: dict[str, SentimentRunner],
) -> None:
    import onnx

    def counts(backend: str) -> dict[str, int]:
        path = runners[backend].forward.path  # type: ignore[attr-defined]
        return fused_operator_counts(onnx.load(str(path)).graph)

    # MiniLM-L6: one embedding block, and per layer one attention, two skip-layer-norms, one GELU.
    fused = {"Attention": 6, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 12,
             "BiasGelu": 6}  # fmt: skip
    assert counts("onnx-fused-fp32") == fused
    assert counts("onnx-fused-int8") == fused  # QAttention counts as Attention
    assert counts("onnx-fp32")["Attention"] == 0  # ORT fuses the plain export only at load
    int8_path = runners["onnx-fused-int8"].forward.path  # type: ignore[attr-defined]
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert "QAttention" in ops
    assert "Attention" not in ops, "the fused attention stayed fp32"


def test_bf16_keeps_labels_on_sst2_dev(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]]
) -> None:
    """bfloat16 autocast (emulated, and slow, on CPUs without AMX / AVX-512 BF16)."""
    texts = [text for text, _ in sst2_dev[:200]]
    fp32 = [p.label for p in runners["torch-fp32"].predict(texts).predictions]
    bf16 = [p.label for p in runners["torch-bf16"].predict(texts).predictions]
    assert sum(a == b for a, b in zip(fp32, bf16, strict=True)) / len(texts) >= 0.99


def test_bf16_hardware_is_amx_or_avx512_bf16() -> None:
    assert flags_with_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert flags_with_bf16(frozenset({"amx_bf16", "amx_tile"}))
    assert not flags_with_bf16(frozenset({"avx2", "avx512_vnni"}))


def test_onnx_int8_keeps_labels_and_accuracy_on_sst2_dev(
    runners: dict[str, SentimentRunner], sst2_dev: list[tuple[str, str]]
) -> None:
    """The issue's bar for the int8 default: >= 99% agreement, accuracy within 0.5 points.
    (onnx-fused-int8 is not held to it: on the AVX2-only CPU it agreed on 98.85%, README
    "Performance"; the bench reports each backend's agreement and picks among those that pass.)"""
    backend = "onnx-int8"
    texts = [text for text, _ in sst2_dev]
    gold = [label for _, label in sst2_dev]
    fp32 = [p.label for p in runners["torch-fp32"].predict(texts).predictions]
    int8 = [p.label for p in runners[backend].predict(texts).predictions]
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
    suffix = "-u8" if unsigned_int8_weights(cpu_flags()) else ""
    assert sorted(path.name for path in exports) == sorted(
        [
            "model.fp32.onnx",
            f"model.int8{suffix}.onnx",
            "model.fused.fp32.onnx",
            f"model.fused.int8{suffix}.onnx",
        ]
    )
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


def test_null_backend_is_the_null_classifier_and_refused_by_the_runner() -> None:
    from models.null import NullClassifier
    from models.runner import load_classifier

    options = RunnerOptions(backend="null")
    classifier = load_classifier("no-such-model", options)
    assert isinstance(classifier, NullClassifier)
    scored = classifier.predict(["odd", "even"])
    assert [p.label for p in scored.predictions] == ["POSITIVE", "NEGATIVE"]
    assert [p.score for p in scored.predictions] == [1.0, 1.0]
    with pytest.raises(ModelLoadError, match="SENTISTREAM_BACKEND=null runs no model"):
        SentimentRunner(str(MINILM), options)


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
