#!/usr/bin/env python3
"""Load a served-format checkpoint (compressed-tensors) with plain transformers
on CPU and write its logits for given token ids.

Used by tests/served.rs; also usable by hand:

    python scripts/check_served.py --model DIR --ids 1,2,3 --out logits.f32

Writes the logits [len(ids), vocab] as little-endian float32 to --out and
prints one JSON line: the versions, the number of modules that carry a
compressed-tensors quantization scheme, and each one's bit width, so the
caller can check that the checkpoint really loaded quantized (a
quantization_config that transformers ignored would load nothing, not
dequantized weights).
"""

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--dequantize",
        action="store_true",
        help="load through transformers' dequantize-at-load route "
        "(CompressedTensorsConfig(dequantize=True)) instead of the compressed modules",
    )
    a = ap.parse_args()

    import compressed_tensors
    import torch
    import transformers

    torch.manual_seed(0)
    ids = [int(x) for x in a.ids.split(",") if x]
    kwargs = {}
    if a.dequantize:
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, **kwargs
    )
    model.eval()
    bits = {}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None and scheme.weights is not None:
            bits[name] = scheme.weights.num_bits
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    logits = logits.to(torch.float32).contiguous().numpy()
    with open(a.out, "wb") as f:
        f.write(logits.astype("<f4").tobytes())
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "compressed_tensors": compressed_tensors.__version__,
                "quantized_modules": len(bits),
                "bits": bits,
                "shape": list(logits.shape),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
