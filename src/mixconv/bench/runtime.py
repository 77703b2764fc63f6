"""Deployment timings: onnxruntime (our fp32 and int8 exports, timm's own ONNX export) side by side with the
PyTorch paths (``optimize_for_inference`` eager and compiled), timed in interleaved rounds in one process.

Used by ``mixconv benchmark --runtime onnxruntime`` and ``benchmarks/deploy.py``.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from mixconv.inference.engine import quiet_cpu_compile

# What each case is; "ours" cases are mixconv's, the rest are the references.
CASES = {
    "timm-ort": "timm's ONNX export (timm.utils.onnx.onnx_export) in onnxruntime",
    "ort-fp32": "mixconv export --optimize, float32, in onnxruntime",
    "ort-int8": "mixconv quantize (QDQ int8), in onnxruntime",
    "torch-optimize": "PyTorch eager, optimize_for_inference",
    "torch-compile": "PyTorch, optimize_for_inference + torch.compile (inductor, freezing)",
    "timm-eager": "PyTorch eager, timm's model",
}
ORT_CASES = ("timm-ort", "ort-fp32", "ort-int8")
TORCH_CASES = ("torch-optimize", "torch-compile", "timm-eager")


@dataclass
class DeployResult:
    case: str
    batch_size: int
    times_s: list[float] = field(default_factory=list)

    @property
    def img_per_s(self) -> float:
        return self.batch_size / statistics.median(self.times_s)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Builder:
    """Builds each case's model once (exports and quantizes into a temporary directory) and hands out steps."""

    def __init__(self, model: str, img_size: int, workdir: Path, calib_data: Optional[str] = None,
                 spin: bool = False) -> None:
        self.model_name, self.img_size, self.workdir, self.calib_data = model, img_size, workdir, calib_data
        self.spin = spin
        self._cache: dict[str, object] = {}

    def mixconv_model(self) -> torch.nn.Module:
        if "mixconv" not in self._cache:
            from mixconv.factory.create import create_model

            torch.manual_seed(0)
            self._cache["mixconv"] = create_model(self.model_name).eval()
        return self._cache["mixconv"]  # type: ignore[return-value]

    def timm_model(self) -> torch.nn.Module:
        if "timm" not in self._cache:
            import timm  # noqa: PLC0415 - the benchmark's reference, never a runtime dependency

            self._cache["timm"] = timm.create_model(self.model_name, pretrained=False).eval()
        return self._cache["timm"]  # type: ignore[return-value]

    def onnx_file(self, case: str) -> Path:
        path = self.workdir / f"{case}.onnx"
        if path.exists():
            return path
        _log(f"exporting {case} to {path}")
        if case == "timm-ort":
            from timm.utils.onnx import onnx_export

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx_export(self.timm_model(), str(path), input_size=(3, self.img_size, self.img_size), batch_size=2)
        elif case == "ort-fp32":
            from mixconv.deploy.export import export_onnx
            from mixconv.surgery.optimize import optimize_for_inference

            export_onnx(optimize_for_inference(self.mixconv_model()), path, img_size=self.img_size, ort_rewrites=True)
        elif case == "ort-int8":
            self._quantize(self.onnx_file("ort-fp32"), path)
        return path

    def _quantize(self, fp32: Path, out: Path) -> None:
        """int8 with random-input calibration (speed does not depend on the ranges), or ``calib_data``."""
        from mixconv.deploy.quantize import QuantizeSettings, quantize_onnx

        if self.calib_data:
            quantize_onnx(fp32, out, data=self.calib_data, settings=QuantizeSettings(calib_images=32), verify=False)
            return
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )

        from mixconv.deploy.quantize import _Reader

        pre = self.workdir / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        g = torch.Generator().manual_seed(0)
        batches = iter([torch.randn(4, 3, self.img_size, self.img_size, generator=g) for _ in range(2)])
        quantize_static(str(pre), str(out), _Reader("input", batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True})

    def step(self, case: str, batch_size: int) -> Callable[[], None]:
        x = torch.randn(batch_size, 3, self.img_size, self.img_size, generator=torch.Generator().manual_seed(1))
        if case in ORT_CASES:
            from mixconv.inference.ort import ort_session

            # No spinning by default: idle ORT threads would otherwise busy-wait on the cores the PyTorch cases
            # run on. ORT's own default (spinning) is for runs of ORT cases only.
            session = self._cache.setdefault(f"session-{case}", ort_session(self.onnx_file(case), spin=self.spin))
            name, arr = session.get_inputs()[0].name, x.numpy()  # type: ignore[union-attr]
            return lambda: session.run(None, {name: arr})  # type: ignore[union-attr]
        model = self._torch_model(case)

        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    def _torch_model(self, case: str) -> torch.nn.Module:
        if case not in self._cache:
            from mixconv.surgery.optimize import optimize_for_inference

            if case == "timm-eager":
                self._cache[case] = self.timm_model()
            elif case == "torch-optimize":
                self._cache[case] = optimize_for_inference(self.mixconv_model())
            elif case == "torch-compile":
                self._cache[case] = compiled_for_inference(self.mixconv_model())
            else:
                raise ValueError(f"unknown case {case!r}; expected one of {', '.join(CASES)}")
        return self._cache[case]  # type: ignore[return-value]


def compiled_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The fastest PyTorch path we have for CPU inference: ``optimize_for_inference`` (BN folded, MixConvs
    merged, NHWC), then ``torch.compile`` with inductor's freezing (weights become constants that oneDNN
    pre-packs; swish and the SE gate fuse into the convs' epilogues). Compiles once per input shape."""
    from mixconv.surgery.optimize import optimize_for_inference

    opt = optimize_for_inference(model)
    opt.micro_stages = 0  # micro-batches only pay at large batches in eager mode; inductor plans the memory
    quiet_cpu_compile(torch.device("cpu"))
    return torch.compile(opt, options={"freezing": True})


def time_cases(builder: Builder, cases: Sequence[str], batch_sizes: Sequence[int], rounds: int = 5,
               warmup: int = 2, min_seconds: float = 0.3) -> list[DeployResult]:
    """Build and warm every (case, batch) up, then time ``rounds`` interleaved rounds of each; each round of a
    case runs it enough times to take ``min_seconds`` (batch-1 calls are short)."""
    import time

    from mixconv.bench.core import time_interleaved

    steps, results = [], []
    for b in batch_sizes:
        for case in cases:
            _log(f"building {case} at batch {b}")
            step = builder.step(case, b)
            for _ in range(warmup):
                step()
            t0 = time.perf_counter()
            step()
            reps = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
            steps.append(lambda step=step, reps=reps: [step() for _ in range(reps)])
            results.append((DeployResult(case, b), reps))
    out = []
    for (res, reps), times in zip(results, time_interleaved(steps, rounds, log=_log)):
        res.times_s = [t / reps for t in times]
        out.append(res)
    return out


def format_results(results: Sequence[DeployResult]) -> str:
    """One line per case and batch size: img/s, ms per batch and the ratio to timm's ONNX in ORT."""
    lines = [f"{'case':16s} {'batch':>5s} {'img/s':>8s} {'ms/batch':>9s} {'x timm-ort':>10s}  what"]
    for r in results:
        ref = next((q for q in results if q.case == "timm-ort" and q.batch_size == r.batch_size), None)
        ratio = f"{r.img_per_s / ref.img_per_s:.2f}" if ref is not None else "-"
        ms = 1000 * statistics.median(r.times_s)
        lines.append(f"{r.case:16s} {r.batch_size:5d} {r.img_per_s:8.1f} {ms:9.2f} {ratio:>10s}  {CASES[r.case]}")
    return "\n".join(lines)


def run_deploy_benchmark(model: str, cases: Sequence[str], batch_sizes: Sequence[int], img_size: int = 224,
                         rounds: int = 5, calib_data: Optional[str] = None,
                         workdir: Optional[Path] = None, spin: bool = False) -> list[DeployResult]:
    """Time ``cases`` (keys of :data:`CASES`) of ``model`` at each batch size; see :func:`time_cases`.
    ``spin``: ORT's idle threads busy-wait between runs (ORT's default; only fair without PyTorch cases)."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; expected some of {', '.join(CASES)}")
    with tempfile.TemporaryDirectory(prefix="mixconv-deploy-bench-") as tmp:
        builder = Builder(model, img_size, Path(workdir or tmp), calib_data, spin)
        return time_cases(builder, cases, batch_sizes, rounds)


def ratio(results: Sequence[DeployResult], case: str, ref: str, batch_size: int) -> Optional[float]:
    """img/s of ``case`` over img/s of ``ref`` at ``batch_size`` (``None`` where either was not timed)."""
    a = next((r for r in results if r.case == case and r.batch_size == batch_size), None)
    b = next((r for r in results if r.case == ref and r.batch_size == batch_size), None)
    return None if a is None or b is None else a.img_per_s / b.img_per_s


def run_from_args(args) -> int:
    """``mixconv benchmark --runtime onnxruntime``: our fp32 and int8 ONNX files in ORT and our PyTorch path
    (compiled too with ``--compile``); with ``--compare timm`` also timm's ONNX export in ORT and timm eager."""
    cases = ["ort-fp32", "ort-int8", "torch-optimize"] + (["torch-compile"] if args.compile else [])
    if args.compare == "timm":
        cases = ["timm-ort", *cases, "timm-eager"]
    if args.mode != "infer" or args.device != "cpu" or args.dtype != "float32":
        raise SystemExit("mixconv benchmark: --runtime onnxruntime times float32 CPU inference (and int8); "
                         "use --mode infer --device cpu --dtype float32")
    for model in args.model:
        results = run_deploy_benchmark(model, cases, [args.batch_size], args.img_size, args.rounds)
        print(f"{model}, batch {args.batch_size}, {args.img_size}x{args.img_size}, {torch.get_num_threads()} "
              f"threads (ORT intra-op threads the same), median of {args.rounds} interleaved rounds")
        print(format_results(results))
    return 0
