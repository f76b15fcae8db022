"""Time every available implementation of pdfgc_ops at the shapes of the 224 px generator (batch 8, SPEC 2.5).

    python -m benchmarks.bench_ops [--threads 1] [--reps 5] [--batch 8] [--quick]

Prints one markdown table: for each op and shape, the median time (ms) of the forward pass and of forward +
backward per implementation, and the speed-up over "ref" (ref time / impl time; > 1 means faster). "auto" is what
the dispatcher picks. With one thread the clock is the process's CPU time (robust on a shared machine), else wall
time. Implementations are timed interleaved, in a rotating order, after warm-up. Shapes:
  * fused_leaky_relu: (8, C, S, S) with bias (1, C, 1, 1), C per resolution S: 512 @ 7..56, 256 @ 112, 128 @ 224;
  * upfirdn2d Blur after the stride-2 transposed modulated conv: (8, C, 2S+1, 2S+1), kernel [1,3,3,1]^2/64*4,
    pad (1, 1) -> S' = 2S;
  * upfirdn2d Upsample of the 3-channel RGB skip: (8, 3, S, S), up 2, pad (2, 1) -> 2S.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import torch

CHANNELS = {7: 512, 14: 512, 28: 512, 56: 512, 112: 256, 224: 128}  # SPEC 2.5 channel table


def _blur_kernel(gain: float) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum() * gain


def cases(batch: int, quick: bool):
    """(op, label, make_inputs, call) tuples; make_inputs(requires_grad) -> tuple of tensors."""
    out = []
    sizes = [7, 14, 28, 56, 112, 224] if not quick else [7, 14, 28]
    for s in sizes:
        c = CHANNELS[s]

        def mk_act(rg, s=s, c=c):
            x = torch.randn(batch, c, s, s, requires_grad=rg)
            b = torch.randn(1, c, 1, 1, requires_grad=rg)
            return x, b

        out.append(("fused_leaky_relu", f"({batch},{c},{s},{s})", mk_act,
                    lambda t, impl: __import__("pdfgc_ops").fused_leaky_relu(t[0], t[1], 0.2, math.sqrt(2),
                                                                            impl=impl)))
    k4 = _blur_kernel(4.0)
    for s in [7, 14, 28, 56, 112] if not quick else [7, 14]:
        c = CHANNELS[2 * s]

        def mk_blur(rg, s=s, c=c):
            return (torch.randn(batch, c, 2 * s + 1, 2 * s + 1, requires_grad=rg),)

        out.append(("upfirdn2d Blur", f"({batch},{c},{2 * s + 1},{2 * s + 1})->{2 * s}", mk_blur,
                    lambda t, impl: __import__("pdfgc_ops").upfirdn2d(t[0], k4, 1, 1, (1, 1), impl=impl)))
    for s in [7, 14, 28, 56, 112] if not quick else [7, 14]:

        def mk_up(rg, s=s):
            return (torch.randn(batch, 3, s, s, requires_grad=rg),)

        out.append(("upfirdn2d Upsample", f"({batch},3,{s},{s})->{2 * s}", mk_up,
                    lambda t, impl: __import__("pdfgc_ops").upfirdn2d(t[0], k4, 2, 1, (2, 1), impl=impl)))
    return out


def _time(fn, reps: int, clock) -> list[float]:
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return ts


def run(threads: int = 1, reps: int = 5, batch: int = 8, quick: bool = False) -> str:
    """Run the benchmark and return the markdown table (also printed by main)."""
    torch.set_num_threads(threads)
    # One thread: the process's CPU time (user + system, so page faults count), which a shared machine's load
    # barely disturbs; several threads: wall-clock time.
    clock, clock_name = (time.process_time, "CPU time") if threads == 1 else (time.perf_counter, "wall time")
    import pdfgc_ops

    impls = ["ref"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pdfgc_ops._ext.get("pdfgc_upfirdn2d")
            pdfgc_ops._ext.get("pdfgc_fused_act")
            impls.append("cpu")
        except pdfgc_ops.ExtensionBuildError as exc:
            print(f"# cpu implementation unavailable: {exc}")
    impls.append("auto")
    lines = [
        f"torch {torch.__version__}, {threads} thread(s), batch {batch}, median {clock_name} of {reps} runs (ms); "
        "speed-up = ref / impl",
        "",
        "| op | input | mode | " + " | ".join(f"{i} ms" for i in impls) + " | "
        + " | ".join(f"{i} speed-up" for i in impls if i != "ref") + " | auto runs |",
        "|---|---|---|" + "---|" * (2 * len(impls)),
    ]
    for op, label, make, call in cases(batch, quick):
        for mode in ("fwd", "fwd+bwd"):
            rg = mode != "fwd"
            inputs = make(rg)
            grad = None

            def step(impl):
                if rg:
                    for t in inputs:  # as optimizer.zero_grad(set_to_none=True): no accumulation pass timed
                        t.grad = None
                    y = call(inputs, impl)
                    y.backward(grad if grad is not None else torch.ones_like(y))
                else:
                    with torch.no_grad():
                        call(inputs, impl)

            if rg:
                with torch.no_grad():
                    grad = torch.randn_like(call(inputs, "ref"))
            for impl in impls:  # warm-up: builds, allocator caches, dispatch tables
                step(impl)
                step(impl)
            # each sample repeats the step so that it lasts >= ~20 ms (sub-millisecond samples are mostly jitter)
            one = min(_time(lambda: step(impls[0]), 3, clock))
            inner = max(1, min(50, int(0.02 / max(one, 1e-6))))

            def sample(impl):
                for _ in range(inner):
                    step(impl)

            times = {i: [] for i in impls}
            for r in range(reps):  # interleaved, order rotated: load changes and allocator state hit all alike
                for impl in impls[r % len(impls):] + impls[: r % len(impls)]:
                    times[impl] += _time(lambda: sample(impl), 1, clock)
            med = {i: statistics.median(v) * 1e3 / inner for i, v in times.items()}
            key = "fused_leaky_relu" if op == "fused_leaky_relu" else "upfirdn2d"
            step("auto")
            auto_runs = pdfgc_ops.backend_info()["running"][key].get("cpu", "?")
            row = f"| {op} | {label} | {mode} | " + " | ".join(f"{med[i]:.2f}" for i in impls) + " | "
            row += " | ".join(f"{med['ref'] / med[i]:.2f}x" for i in impls if i != "ref") + f" | {auto_runs} |"
            lines.append(row)
            print(row, flush=True)
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    args = ap.parse_args(argv)
    table = run(args.threads, args.reps, args.batch, args.quick)
    print()
    print(table)


if __name__ == "__main__":
    main()
