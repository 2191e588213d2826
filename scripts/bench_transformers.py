#!/usr/bin/env python3
"""Forward-pass throughput of Hugging Face transformers (PyTorch, CPU) on the demo model.

The baseline our Rust forward pass is compared with (docs/forward-speed.md):
the bundled demo model loaded in float32, a batch of 8 windows of 256 tokens
taken from the start of assets/data/docs.test.txt (tokenized without special
tokens), one full forward = logits for all 8 x 256 positions. After a warm-up
forward, each configuration is timed over --runs forwards and reported as
median and best tokens/s (2048 tokens / seconds per forward).

Usage (from the repository root):
    .venv/bin/python scripts/bench_transformers.py [--threads 1,2] [--attn sdpa,eager] [--runs 10]
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def load_batch(model_dir: Path, text: Path, batch: int, seq: int) -> torch.Tensor:
    """Tokenize the whole file (no special tokens) and keep the first batch*seq ids as [batch, seq].

    Same protocol as the perplexity reference in shared/reference/llama-8m/reference.json.
    """
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode(text.read_text(encoding="utf-8"), add_special_tokens=False).ids
    need = batch * seq
    if len(ids) < need:
        raise SystemExit(f"{text}: only {len(ids)} tokens, need {need}")
    return torch.tensor(ids[:need], dtype=torch.int64).view(batch, seq)


@torch.inference_mode()
def nll_per_token(model, input_ids: torch.Tensor) -> float:
    """Mean next-token NLL over the batch: a sanity check that the model loaded correctly."""
    logits = model(input_ids=input_ids, use_cache=False).logits.float()
    return float(
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
    )


def cpu_busy_s() -> float | None:
    """Seconds of busy CPU time summed over all cores since boot (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@torch.inference_mode()
def time_forwards(model, input_ids: torch.Tensor, runs: int) -> list[float]:
    model(input_ids=input_ids, use_cache=False)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=False)
        _ = out.logits[-1, -1, 0].item()  # make sure the result is materialised
        times.append(time.perf_counter() - t0)
    assert out.logits.shape == (*input_ids.shape, model.config.vocab_size)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "assets/demo-model")
    ap.add_argument("--text", type=Path, default=ROOT / "assets/data/docs.test.txt")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    ap.add_argument("--attn", default="sdpa,eager", help="comma-separated attn_implementation values")
    ap.add_argument("--runs", type=int, default=10, help="timed forwards per configuration (>= 1)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    attns = args.attn.split(",")
    if args.runs < 1 or any(t < 1 for t in threads):
        ap.error("--runs and --threads must be >= 1")

    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    input_ids = load_batch(args.model, args.text, args.batch, args.seq)
    ntok = input_ids.numel()
    results = []
    for attn in attns:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attn)
        model.eval()
        assert next(model.parameters()).dtype == torch.float32
        nll = nll_per_token(model, input_ids)
        if not nll < 5.0:  # the reference NLL on docs.test.txt at 256 is 3.56; uniform would be 8.3
            raise SystemExit(f"NLL {nll:.3f} on the batch: the model did not load correctly")
        for nt in threads:
            torch.set_num_threads(nt)
            busy0, own0, wall0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
            times = time_forwards(model, input_ids, args.runs)
            busy1, own1, wall1 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
            # CPU time other processes used while we were timing, as a fraction of all cores:
            # the noise indicator for a shared machine (0 = we had the machine to ourselves).
            others = None
            if busy0 is not None:
                others = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
            med, best = statistics.median(times), min(times)
            results.append(
                {
                    "attn_implementation": attn,
                    "threads": nt,
                    "nll_per_token_on_batch": round(nll, 4),
                    "runs": args.runs,
                    "median_s": round(med, 5),
                    "best_s": round(best, 5),
                    "median_tokens_per_s": round(ntok / med, 1),
                    "best_tokens_per_s": round(ntok / best, 1),
                    "other_processes_cpu_fraction": None if others is None else round(others, 3),
                }
            )
        del model
    report = {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "input": f"first {args.batch}x{args.seq} tokens of {args.text.name}, no special tokens",
        "shape": list(input_ids.shape),
        "tokens_per_forward": ntok,
        "dtype": "float32",
        "forward": "model(input_ids, use_cache=False): logits for all positions, torch.inference_mode",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg_start,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
