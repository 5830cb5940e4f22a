"""The model runner alone, per backend and batch size: ``python -m bench.offline``.

Needs only torch, transformers (and onnxruntime for onnx-*): it runs where the Kafka stack is not
installed, e.g. on a GPU machine. Random-init DistilBERT SST-2 (the real architecture's cost);
every backend's probabilities are compared with the first backend's on the same texts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.messages import message_mix
from bench.random_model import save_random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="distilbert-sst2-config directory")
    parser.add_argument("--backends", default="torch-fp32,onnx-int8")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="16,32")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from models.runner import RunnerOptions, SentimentRunner

    work = Path(tempfile.mkdtemp(prefix="bench-offline-"))
    save_random_model(args.config, work / "model")
    texts = [m["text"] for m in message_mix(args.messages)]
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name}; {len(texts)} messages; torch {torch.__version__}")
    print("| backend | batch size | msg/s (best of repeats) | padding eff. | max abs prob diff |")
    print("|---|---:|---:|---:|---:|")
    reference: np.ndarray | None = None
    for backend in args.backends.split(","):
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            runner = SentimentRunner(
                str(work / "model"),
                RunnerOptions(
                    device=args.device,
                    backend=backend,
                    max_batch_size=batch_size,
                    max_batch_tokens=max(4096, batch_size * 128),
                    torch_threads=args.threads,
                    cache_dir=work / "cache",
                ),
            )
            best = 0.0
            for _ in range(args.repeats):
                started = time.perf_counter()
                scored = runner.predict(texts)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                best = max(best, len(texts) / (time.perf_counter() - started))
            probs = np.array([[p.probabilities[k] for k in sorted(p.probabilities)]
                              for p in scored.predictions])  # fmt: skip
            if reference is None:
                reference = probs
            diff = float(np.abs(probs - reference).max())
            print(f"| {backend} | {batch_size} | {best:.1f} | {scored.padding_efficiency:.2f} "
                  f"| {diff:.2e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
