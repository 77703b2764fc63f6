"""A latency model of the user's target: a per-block lookup table, measured here, cached, and checked.

Every distinct block (input shape, output channels, stride and the slot's choice) is measured once on the
target, with fixed threads, warm-up and the median of timed runs; so are the stem and head together, and the
fixed cost of one runtime call (an empty graph). The predicted latency of an architecture is

    stem_and_head + sum(block - call_overhead)

since each separately timed block pays the runtime's per-call cost that a whole network pays once; for timed
targets that sum is then calibrated (``scale * sum + offset``) on ten random architectures measured end to end,
a set apart from the error check's (see :meth:`LatencyModel.calibrate`). The table
is a JSON file named by a hash of its key (CPU, runtime and version, target, batch, threads, input), written
atomically and reused by every later search with the same key. ``macs`` is analytic: millions of
multiply-accumulates (``torch.utils.flop_counter``), no timing.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from mixconv.files.atomic import atomic_write
from mixconv.files.config import ConfigError
from mixconv.kernels.capability import cpu_info, cpu_model_name
from mixconv.models.builder import ResolvedBlock
from mixconv.models.mixnet import MixNetBlock
from mixconv.models.profile import count_macs
from mixconv.models.space import Arch, LayerChoice, SearchSpace

TARGETS = ("onnxruntime", "onnxruntime-int8", "torch-cpu", "cuda", "macs")
TABLE_VERSION = 2
CALIBRATION = ("calibration.scale", "calibration.offset")


class LatencyError(ConfigError):
    """A target that cannot be measured here (no GPU for ``cuda``, an unknown name)."""


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise LatencyError(f"--target: got {target!r}; expected one of {', '.join(TARGETS)}")
    if target == "cuda" and not torch.cuda.is_available():
        raise LatencyError("--target cuda: no CUDA GPU is available on this machine; use onnxruntime, "
                           "onnxruntime-int8, torch-cpu or macs")
    return target


def runtime_version(target: str) -> str:
    if target.startswith("onnxruntime"):
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"
    if target == "cuda":
        return f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"
    return f"torch {torch.__version__}"


@dataclass(frozen=True)
class TableKey:
    """What a measured table is valid for; a change to any field means measuring again."""

    target: str
    img_size: int
    batch_size: int = 1
    threads: int = 1
    in_chans: int = 3
    device: str = field(default_factory=lambda: f"{cpu_model_name()} ({cpu_info().describe()})")
    runtime: str = ""

    def to_dict(self) -> dict:
        return {"version": TABLE_VERSION, "target": self.target, "img_size": self.img_size,
                "batch_size": self.batch_size, "threads": self.threads, "in_chans": self.in_chans,
                "device": self.device, "runtime": self.runtime or runtime_version(self.target)}

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.target}-{self.img_size}px-b{self.batch_size}-t{self.threads}-{digest}.json"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mixconv" / "latency"


# --- what gets measured -------------------------------------------------------------------------------------
def spatial_sizes(space: SearchSpace, img_size: int) -> list[int]:
    """The input height (= width) of every slot for a square ``img_size`` input."""
    h = (img_size + 1) // 2  # the stride-2 stem
    sizes = []
    for slot in space.layers:
        sizes.append(h)
        if slot.stride == 2:
            h = (h + 1) // 2
    return sizes


def resolved_block(space: SearchSpace, i: int, choice: LayerChoice) -> ResolvedBlock:
    """The concrete block slot ``i`` builds for ``choice`` (as the MixNet of the architecture has it)."""
    slot = space.layers[i]
    in_ch, mid = space.in_channels()[i], space.mid_channels(i, choice.expansion)
    return ResolvedBlock(
        in_channels=in_ch, mid_channels=mid, out_channels=space.out_channels(i), kernel_sizes=choice.kernel_sizes,
        stride=slot.stride, exp_groups=1 if choice.expansion == 1 else choice.groups, poi_groups=choice.groups,
        se_channels=space.se_channels(i) if choice.se else None, act=choice.act, split="equal", dilation=1,
        drop_path=0.0)


def block_key(block: ResolvedBlock, h: int) -> str:
    k = ".".join(str(x) for x in block.kernel_sizes)
    return (f"{block.in_channels}x{h}-{block.mid_channels}-{block.out_channels}-s{block.stride}-k{k}-"
            f"g{block.exp_groups}.{block.poi_groups}-{block.act}-se{block.se_channels or 0}")


class _StemHead(nn.Module):
    """The fixed part of every candidate: stem, head conv, pooling and classifier (the blocks replaced by a
    channel-changing 1x1 conv-free pass: the head takes the stem's output resized to the last slot's shape)."""

    def __init__(self, net: nn.Module, last_ch: int, last_h: int) -> None:
        super().__init__()
        self.stem, self.head, self.classifier = net.stem, net.head, net.classifier
        self.last_ch, self.last_h = last_ch, last_h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        # Stand-in for the blocks: the head's input at the right shape, derived from the stem's output.
        z = torch.nn.functional.adaptive_avg_pool2d(s[:, :1], self.last_h).expand(-1, self.last_ch, -1, -1)
        return self.classifier(self.head(z).mean((2, 3)))


# --- timing -------------------------------------------------------------------------------------------------
def median_ms(run: Callable[[], object], rounds: int = 7, min_seconds: float = 0.004,
              sync: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of one call: warm-up, then ``rounds`` timings of enough calls to last ``min_seconds``."""
    for _ in range(3):
        run()
    sync()
    t0 = time.perf_counter()
    run()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            run()
        sync()
        samples.append((time.perf_counter() - t0) / inner * 1000.0)
    return statistics.median(samples)


class Runner:
    """Measures one module on the target (``ms`` for it, or MMACs for ``macs``)."""

    def __init__(self, key: TableKey, rounds: int = 7) -> None:
        self.key, self.rounds = key, rounds

    def __call__(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        module = module.eval()
        target = self.key.target
        if target == "macs":
            return count_macs(module, shape[1:]) / 1e6
        x = torch.randn(*shape)
        if target in ("torch-cpu", "cuda"):
            return self._torch(module, x)
        return self._ort(module, x)

    def _torch(self, module: nn.Module, x: torch.Tensor) -> float:
        cuda = self.key.target == "cuda"
        device = torch.device("cuda" if cuda else "cpu")
        module, x = module.to(device), x.to(device).contiguous(memory_format=torch.channels_last)
        module = module.to(memory_format=torch.channels_last)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.key.threads)
        try:
            with torch.inference_mode():
                return median_ms(lambda: module(x), self.rounds,
                                 sync=torch.cuda.synchronize if cuda else (lambda: None))
        finally:
            torch.set_num_threads(threads)

    def _ort(self, module: nn.Module, x: torch.Tensor) -> float:
        import numpy as np

        session = ort_session_for(module, x, self.key.target == "onnxruntime-int8", self.key.threads)
        name = session.get_inputs()[0].name
        arr = np.ascontiguousarray(x.numpy())
        return median_ms(lambda: session.run(None, {name: arr}), self.rounds)


def onnx_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    """``module`` exported as our deploy path exports (TorchScript exporter, graph tuned for onnxruntime)."""
    import warnings

    import onnx

    from mixconv.deploy.ort_graph import tune_for_onnxruntime

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    tune_for_onnxruntime(proto)
    return proto.SerializeToString()


def _quantized(model: bytes, x: torch.Tensor) -> bytes:
    """``model`` quantized as ``mixconv quantize`` does by default (static QDQ, per-channel int8 weights, uint8
    activations), calibrated on random inputs: the values do not matter for timing, the graph does."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": torch.randn_like(x).numpy()} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="mixconv-latency-") as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True})
        return dst.read_bytes()


def ort_session_for(module: nn.Module, x: torch.Tensor, int8: bool, threads: int):
    import onnxruntime as ort

    model = onnx_bytes(module, x)
    if int8:
        model = _quantized(model, x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


# --- the table ----------------------------------------------------------------------------------------------
class LatencyTable:
    """Per-block measurements of one :class:`TableKey`, loaded from and saved to its cache file."""

    def __init__(self, key: TableKey, cache_dir: Optional[Path] = None) -> None:
        self.key = key
        self.path = Path(cache_dir or default_cache_dir()) / key.file_name()
        self.entries: dict[str, float] = {}
        self.loaded = False
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{self.path}: an unreadable latency table ({e}); delete it to measure again")
            if doc.get("key") == key.to_dict() and isinstance(doc.get("entries"), dict):
                self.entries = {str(k): float(v) for k, v in doc["entries"].items()}
                self.loaded = True

    def save(self) -> None:
        doc = {"key": self.key.to_dict(), "entries": dict(sorted(self.entries.items()))}
        text = json.dumps(doc, indent=1)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def missing(self, wanted: Iterable[str]) -> list[str]:
        return [k for k in wanted if k not in self.entries]


class LatencyModel:
    """Predicts an architecture's latency (or MMACs) on the target from the per-block table."""

    def __init__(self, space: SearchSpace, key: TableKey, cache_dir: Optional[Path] = None, rounds: int = 7) -> None:
        self.space, self.key = space, key
        self.table = LatencyTable(key, cache_dir)
        self.runner = Runner(key, rounds)
        self.sizes = spatial_sizes(space, key.img_size)

    @property
    def unit(self) -> str:
        return "MMACs" if self.key.target == "macs" else "ms"

    def _block_module(self, i: int, choice: LayerChoice) -> tuple[str, Optional[Callable[[], nn.Module]]]:
        block = resolved_block(self.space, i, choice)
        return block_key(block, self.sizes[i]), lambda: MixNetBlock(block)

    def _fixed(self) -> tuple[str, Callable[[], nn.Module]]:
        from mixconv.models.supernet import Supernet

        last = len(self.space.layers) - 1
        last_h = (self.sizes[last] + 1) // 2 if self.space.layers[last].stride == 2 else self.sizes[last]

        def build() -> nn.Module:
            return _StemHead(Supernet(self.space, 100, self.key.in_chans), self.space.out_channels(last), last_h)

        return f"stem-head-{self.space.stem_channels}-{self.space.num_features}-{self.space.width_mult}", build

    def wanted(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Every measurement the space needs: key -> (module builder, input shape)."""
        b, c = self.key.batch_size, self.key.in_chans
        out: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {}
        name, build = self._fixed()
        out[name] = (build, (b, c, self.key.img_size, self.key.img_size))
        if self.key.target != "macs":
            out["call-overhead"] = (lambda: nn.Identity(), (b, 8, 4, 4))
        in_chs = self.space.in_channels()
        for i in range(len(self.space.layers)):
            for choice in self.space.slot_choices(i):
                if choice.keep:
                    key, build_block = self._block_module(i, choice)
                    out[key] = (build_block, (b, in_chs[i], self.sizes[i], self.sizes[i]))
        return out

    def measure(self, progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Measure what the cached table lacks (saving as it goes); returns how many were measured."""
        wanted = self.wanted()
        missing = self.table.missing(wanted)
        torch.manual_seed(0)
        for n, key in enumerate(missing, 1):
            build, shape = wanted[key]
            module = build()
            if key == "call-overhead":  # an empty graph: a single Relu (an ONNX graph needs one node)
                module = nn.ReLU()
            self.table.entries[key] = self.runner(module, shape)
            if n % 25 == 0 or n == len(missing):
                self.table.save()
            if progress is not None:
                progress(n, len(missing))
        self.calibrate()
        return len(missing)

    def calibrate(self, n: int = 10, seed: int = 10_000) -> None:
        """Fit ``measured = scale * table_sum + offset`` on ``n`` random architectures measured end to end (a
        set apart from the error check's) and keep it in the table. Why: blocks timed alone run with their
        weights and activations hot in cache; in a whole network they are not, and on this project's 2-core
        Xeon the plain sum came out 25% low on average (onnxruntime, batch 1, 32 px)."""
        if self.key.target == "macs" or CALIBRATION[0] in self.table.entries:
            return
        rng = random.Random(seed)
        archs = [self.space.sample(rng) for _ in range(n)]
        xs = [self.raw(a) for a in archs]
        ys = [self.measure_arch(a) for a in archs]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        scale = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 1.0
        if scale <= 0:  # a degenerate fit (too few or too alike architectures): a ratio instead
            scale, offset = my / mx, 0.0
        else:
            offset = my - scale * mx
        self.table.entries[CALIBRATION[0]], self.table.entries[CALIBRATION[1]] = scale, offset
        self.table.save()

    def block_cost(self, i: int, choice: LayerChoice) -> float:
        if not choice.keep:
            return 0.0
        key, _ = self._block_module(i, choice)
        overhead = self.table.entries.get("call-overhead", 0.0)
        return self.table.entries[key] - overhead

    def raw(self, arch: Arch) -> float:
        """The table's sum for ``arch``: stem and head plus every block less one call's overhead."""
        fixed = self.table.entries[self._fixed()[0]]
        return fixed + sum(self.block_cost(i, c) for i, c in enumerate(arch))

    def predict(self, arch: Arch) -> float:
        """The predicted latency (or MMACs): the table's sum, calibrated where it has been (timed targets)."""
        scale = self.table.entries.get(CALIBRATION[0], 1.0)
        return scale * self.raw(arch) + self.table.entries.get(CALIBRATION[1], 0.0)

    def fastest(self) -> tuple[float, Arch]:
        """The lowest prediction in the space and its architecture (exact: the model is a sum over slots)."""
        arch = tuple(min(self.space.slot_choices(i), key=lambda c, i=i: self.block_cost(i, c))
                     for i in range(len(self.space.layers)))
        return self.predict(arch), arch

    def measure_arch(self, arch: Arch, num_classes: int = 100) -> float:
        """End-to-end measurement of the whole network of ``arch`` on the target."""
        from mixconv.models.mixnet import MixNet

        net = MixNet(self.space.to_spec(arch), num_classes=num_classes, in_chans=self.key.in_chans)
        net.channels_last = self.key.target in ("torch-cpu", "cuda")
        shape = (self.key.batch_size, self.key.in_chans, self.key.img_size, self.key.img_size)
        return self.runner(net, shape)


@dataclass(frozen=True)
class PredictorError:
    """Predicted against measured end-to-end latency on random architectures."""

    n: int
    mape: float  # mean absolute percentage error
    within_10: float  # share (0..1) of architectures predicted within +-10%
    kendall_tau: float
    pairs: tuple[tuple[float, float], ...]  # (predicted, measured)

    def describe(self, unit: str = "ms") -> str:
        return (f"latency predictor on {self.n} random architectures: mean abs error {100 * self.mape:.1f}%, "
                f"{100 * self.within_10:.0f}% within +-10%, Kendall tau {self.kendall_tau:.3f}")

    def to_dict(self) -> dict:
        return {"n": self.n, "mape": self.mape, "within_10": self.within_10, "kendall_tau": self.kendall_tau,
                "pairs": [list(p) for p in self.pairs]}


def predictor_error(model: LatencyModel, n: int = 30, seed: int = 0,
                    progress: Optional[Callable[[int, int], None]] = None) -> PredictorError:
    """Measure ``n`` random architectures end to end and compare with the table's predictions."""
    from scipy.stats import kendalltau

    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        arch = model.space.sample(rng)
        pairs.append((model.predict(arch), model.measure_arch(arch)))
        if progress is not None:
            progress(k + 1, n)
    errs = [abs(p - m) / m for p, m in pairs]
    tau = kendalltau([p for p, _ in pairs], [m for _, m in pairs]).statistic if n > 1 else 1.0
    return PredictorError(n, sum(errs) / n, sum(e <= 0.10 for e in errs) / n, float(tau), tuple(pairs))
