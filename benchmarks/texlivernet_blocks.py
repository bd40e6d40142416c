"""TexLiverNet blocks on the CPU: agent attention (TIA) vs plain cross-attention, gather roll vs a torch.roll loop.

    python benchmarks/texlivernet_blocks.py [--repeats 9] [--warmup 2] [--out benchmarks/texlivernet_blocks_cpu.json]

One torch thread, float32, batch 2. Rows:

* TIA (C=256, text_dim 384, 4 heads, 7x7 agents) at 32x32 and 64x64 image tokens x 16, 32, 64 text tokens, forward +
  backward, against a plain cross-attention baseline defined here (:class:`PlainCrossAttention`: the same module with
  image tokens attending to all text tokens directly; same projections, heads, masking, float32 softmax and
  diversity path), measured in the same run;
* :func:`~nnunet_ext.architectures.blocks.rolling_mlp.roll_channels` (one gather) against Rolling-UNet's per-channel
  loop of ``torch.roll`` at C=512, 32x32 and C=256, 64x64 (forward only, no autograd).

Time: median of ``--repeats`` runs after ``--warmup`` runs, block and baseline alternating, ``time.perf_counter``.
Peak memory: one extra run under ``torch.profiler`` with ``profile_memory=True``; the CPU allocation and free events it
records are replayed in time order and the peak of the running total is reported (bytes allocated during the run on
top of what existed before: parameters and inputs excluded; activations, temporaries and the gradients of the
parameters and input included). Writes a JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "texlivernet_blocks_cpu.json"
MIB = 2 ** 20


def _plain_cross_attention_class():
    """The baseline: TIA with its agent bottleneck removed (``O = softmax(Q K^T / sqrt(d)) V``); built lazily so
    importing this script does no torch work."""
    import torch

    from nnunet_ext.architectures.blocks.agent_attention import TextImageAgentAttention
    from nnunet_ext.architectures.blocks.temporal_transformer import autocast_off

    class PlainCrossAttention(TextImageAgentAttention):
        def _attend(self, q, a, k, v, key_mask):
            scale = q.shape[-1] ** -0.5
            with autocast_off(q.device.type):
                logits = (q.float() * scale) @ k.float().transpose(-2, -1)  # (B, h, n, T')
                logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
                return torch.softmax(logits, dim=-1) @ v.float()

    return PlainCrossAttention


def peak_allocated_bytes(fn, setup=None) -> int:
    """Peak of the running total of CPU bytes allocated while ``fn()`` runs, replayed from the allocation events of
    ``torch.profiler`` (``profile_memory=True``). ``setup()`` runs before profiling starts (e.g. to free old
    gradients, whose frees the profiler could not size)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    if setup is not None:
        setup()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and str(node.extra_fields.device).startswith("cpu"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    total = peak = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak


def time_pair(fn_a, fn_b, warmup: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fn_a`` and ``fn_b``, run alternately (drift on a shared machine hits both)."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times_a), statistics.median(times_b)


def _clear_grads(module, f) -> None:
    module.zero_grad(set_to_none=True)
    f.grad = None


def _train_step(module, f, text, mask, grad) -> None:
    """One forward + backward of a TIA-like module (fresh gradients)."""
    _clear_grads(module, f)
    module(f, text, mask).backward(grad)


def _tia_rows(args) -> list[dict]:
    import torch
    from torch import nn

    from nnunet_ext.architectures.blocks.agent_attention import TextImageAgentAttention

    plain_cls = _plain_cross_attention_class()
    c, text_dim, heads, agents, batch = args.channels, 384, 4, 7, 2
    rows = []
    for side in args.image_sizes:
        for tokens in args.text_tokens:
            torch.manual_seed(0)
            kwargs = dict(heads=heads, agents=agents, max_text_tokens=max(args.text_tokens))
            tia = TextImageAgentAttention(c, text_dim, nn.Conv2d, **kwargs).train()
            plain = plain_cls(c, text_dim, nn.Conv2d, **kwargs).train()
            plain.load_state_dict(tia.state_dict())
            f = torch.randn(batch, c, side, side, requires_grad=True)
            text = torch.randn(batch, tokens, text_dim)
            mask = torch.ones(batch, tokens, dtype=torch.bool)
            grad = torch.ones(batch, c, side, side)
            run, run_base = (functools.partial(_train_step, m, f, text, mask, grad) for m in (tia, plain))
            ms, base_ms = time_pair(run, run_base, args.warmup, args.repeats)
            peak = peak_allocated_bytes(run, functools.partial(_clear_grads, tia, f))
            base_peak = peak_allocated_bytes(run_base, functools.partial(_clear_grads, plain, f))
            rows.append({"block": "TextImageAgentAttention", "baseline": "plain cross-attention (in the script)",
                         "pass": "forward+backward", "batch": batch, "channels": c, "text_dim": text_dim,
                         "heads": heads, "agents": f"{agents}x{agents}", "image": [side, side],
                         "image_tokens": side * side, "text_tokens": tokens,
                         "ms": round(ms, 2), "peak_mib": round(peak / MIB, 2),
                         "baseline_ms": round(base_ms, 2), "baseline_peak_mib": round(base_peak / MIB, 2)})
            print(f"TIA {side}x{side} T={tokens}: {ms:.1f} ms / {peak / MIB:.1f} MiB, "
                  f"plain {base_ms:.1f} ms / {base_peak / MIB:.1f} MiB", flush=True)
    return rows


def _roll_rows(args) -> list[dict]:
    import torch

    from nnunet_ext.architectures.blocks.rolling_mlp import roll_channels

    def loop_roll(x, axis: int):  # Rolling-UNet's implementation: one torch.roll per channel
        return torch.cat([torch.roll(x_c, c, axis) for c, x_c in enumerate(torch.chunk(x, x.shape[1], 1))], 1)

    rows = []
    for channels, side in args.roll_sizes:
        torch.manual_seed(0)
        x = torch.randn(2, channels, side, side)
        assert torch.equal(roll_channels(x, 3), loop_roll(x, 3))
        with torch.no_grad():
            ms, base_ms = time_pair(lambda x=x: roll_channels(x, 3), lambda x=x: loop_roll(x, 3), args.warmup,
                                    args.repeats)
            peak = peak_allocated_bytes(lambda x=x: roll_channels(x, 3))
            base_peak = peak_allocated_bytes(lambda x=x: loop_roll(x, 3))
        rows.append({"block": "roll_channels (one gather)", "baseline": "per-channel torch.roll loop + cat",
                     "pass": "forward (no autograd)", "batch": 2, "channels": channels, "image": [side, side],
                     "ms": round(ms, 3), "peak_mib": round(peak / MIB, 2),
                     "baseline_ms": round(base_ms, 3), "baseline_peak_mib": round(base_peak / MIB, 2)})
        print(f"roll C={channels} {side}x{side}: gather {ms:.3f} ms, loop {base_ms:.3f} ms", flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| block | sizes | ms | peak MiB | baseline ms | baseline peak MiB | time ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "text_tokens" in r:
            sizes = f"{r['image'][0]}x{r['image'][1]} image tokens, {r['text_tokens']} text tokens, C={r['channels']}"
            name = "TIA vs plain cross-attention"
        else:
            sizes = f"C={r['channels']}, {r['image'][0]}x{r['image'][1]}"
            name = "roll_channels gather vs torch.roll loop"
        lines.append(f"| {name} | {sizes} | {r['ms']} | {r['peak_mib']} | {r['baseline_ms']} | "
                     f"{r['baseline_peak_mib']} | {r['ms'] / r['baseline_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke run of the script")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.channels = 1, 0, 16
        args.image_sizes, args.text_tokens, args.roll_sizes = [8], [4], [(8, 8)]
    else:
        args.channels, args.image_sizes, args.text_tokens = 256, [32, 64], [16, 32, 64]
        args.roll_sizes = [(512, 32), (256, 64)]

    import torch

    torch.set_num_threads(1)
    rows = _tia_rows(args) + _roll_rows(args)
    result = {
        "name": "texlivernet_blocks_cpu",
        "command": " ".join(["python benchmarks/texlivernet_blocks.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": {"uname_m": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "settings": {"dtype": "float32", "device": "cpu", "torch_threads": 1, "repeats": args.repeats,
                     "warmup": args.warmup},
        "timing": f"median of {args.repeats} runs after {args.warmup} warm-up runs, block and baseline alternating "
                  "(time.perf_counter); TIA rows: forward + backward (loss gradient of ones, parameter and input "
                  "gradients computed); roll rows: forward only under torch.no_grad",
        "memory": "peak of the running total of CPU allocations minus frees during one run, replayed in time order "
                  "from the allocation events of torch.profiler (profile_memory=True); parameters and inputs that "
                  "existed before the run are excluded, their gradients are included",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nCPU ({platform.machine()}), torch {torch.__version__}, 1 thread, float32, batch 2; {result['date']}")
    print(markdown_table(rows))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
