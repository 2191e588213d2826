#!/usr/bin/env python3
"""GPTQ written with PyTorch, timed on the shapes of crates/compress/examples/bench_gptq.rs.

The structure follows the GPTQ reference implementation (Frantar et al. 2022,
`GPTQ.fasterquant` with its min-max `Quantizer`): dead inputs, relative damping,
Cholesky -> cholesky_inverse -> upper Cholesky, blocks of 128 columns with a
per-column Python loop inside the block and a matmul for the lazy update of the
remaining columns, group grids fitted when a group starts. It is the
comparison point for the Rust implementation; its output error is printed so
that the two can be checked against each other.

Usage:
    python scripts/bench_gptq_torch.py [--rows 4096] [--cols 4096] [--tokens 8192]
        [--group 128] [--bits 2,3,4,5,6,8] [--threads 1,2] [--repeat 1]

W ~ N(0, 1), X ~ N(0, 1) (torch.manual_seed(2026)); H = 2/T * X^T X (the
reference's normalisation; the result does not depend on it).
"""

import argparse
import time

import torch


def find_params(x, maxq):
    """Per-row asymmetric min-max grid of x [rows, g] (the reference's Quantizer)."""
    xmin = torch.clamp(x.min(dim=1).values, max=0)
    xmax = torch.clamp(x.max(dim=1).values, min=0)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero] = -1
    xmax[both_zero] = 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def prepare(H, percdamp=0.01):
    """Dead inputs, damping, upper Cholesky factor of H^-1 (as in fasterquant)."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0])
    H[idx, idx] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    return Hinv, dead


def sweep(W, Hinv, dead, bits, groupsize, blocksize=128):
    """The fasterquant column loop; returns the dequantized weights."""
    maxq = 2**bits - 1
    W = W.clone()
    W[:, dead] = 0
    columns = W.shape[1]
    scale, zero = find_params(W, maxq)
    Q = torch.zeros_like(W)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize > 0 and (i1 + i) % groupsize == 0:
                scale, zero = find_params(W[:, (i1 + i) : (i1 + i + groupsize)], maxq)
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def rel_error(W, Q, H):
    D = (W - Q).double()
    Hd = H.double()
    return (torch.sum((D @ Hd) * D) / torch.sum((W.double() @ Hd) * W.double())).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--bits", default="2,3,4,5,6,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    bits = [int(b) for b in a.bits.split(",")]
    torch.manual_seed(2026)
    X = torch.randn(a.tokens, a.cols)
    W = torch.randn(a.rows, a.cols)
    print(
        f"torch {torch.__version__}: W {a.rows}x{a.cols}, H from {a.tokens} tokens, "
        f"group {a.group}, best of {a.repeat}"
    )

    def best(f):
        out, t = None, float("inf")
        for _ in range(a.repeat):
            s = time.perf_counter()
            out = f()
            t = min(t, time.perf_counter() - s)
        return out, t

    for t in [int(v) for v in a.threads.split(",")]:
        torch.set_num_threads(t)
        with torch.no_grad():
            H, t_h = best(lambda: (X.t() @ X) * (2.0 / a.tokens))
            (Hinv, dead), t_prep = best(lambda: prepare(H))
            print(f"\nthreads {t}: hessian {t_h:.3f} s, prepare {t_prep:.3f} s")
            print("| bits | sweep (s) | prepare + sweep (s) | rel. error |")
            print("|---:|---:|---:|---:|")
            total = 0.0
            for b in bits:
                Q, t_s = best(lambda: sweep(W, Hinv, dead, b, a.group))
                total += t_prep + t_s
                err = float("nan") if a.no_eval else rel_error(W, Q, H)
                print(f"| {b} | {t_s:.3f} | {t_prep + t_s:.3f} | {err:.4e} |")
            print(f"threads {t}: {len(bits)} x fasterquant (prepare + sweep each) = {total:.3f} s")


if __name__ == "__main__":
    main()
