#!/usr/bin/env python3
"""Load a GPTQ checkpoint written by `dynapress export --format gptq` with
GPTQModel on CPU (its torch kernel) and write its logits for given token ids.

Used by tests/served.rs; also usable by hand:

    python scripts/check_gptq.py --model DIR --ids 1,2,3 --out logits.f32

Writes the logits [len(ids), vocab] as little-endian float32 to --out and
prints one JSON line: the versions and each quantized module's bit width and
group size as GPTQModel built it (so the caller can check that the `dynamic`
rules gave every module its own width).
"""

import argparse
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import gptqmodel
    import torch
    import transformers
    from gptqmodel import BACKEND, GPTQModel

    torch.manual_seed(0)
    ids = [int(x) for x in a.ids.split(",") if x]
    x = torch.tensor([ids], dtype=torch.long)
    # GPTQModel's CPU kernel computes in float16 or bfloat16 only.
    model = GPTQModel.load(a.model, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    bits = {}
    weights = {}
    for name, module in model.model.named_modules():
        if hasattr(module, "qweight") and hasattr(module, "bits"):
            bits[name] = [int(module.bits), int(module.group_size)]
            # GPTQModel's own unpacking, with the f16 scales widened to f32 so
            # that scale · (q − z) is exact: the weights the checkpoint holds.
            scales = module.scales
            module.scales = scales.to(torch.float32)
            weights[name + ".weight"] = module.dequantize_weight().to(torch.float32).T.contiguous()
            module.scales = scales
    with torch.no_grad():
        kernel = model.model(x).logits[0].to(torch.float32)
    # The same weights in a float32 transformers model: the checkpoint's
    # logits without the kernel's float16 arithmetic.
    config = transformers.AutoConfig.from_pretrained(a.model)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in model.model.state_dict().items()
             if not any(k.endswith(s) for s in (".qweight", ".qzeros", ".scales", ".g_idx"))}
    state.update(weights)
    missing, unexpected = dense.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing:
        raise SystemExit(f"weights missing from the checkpoint: {missing[:5]}")
    dense.eval()
    with torch.no_grad():
        logits = dense(x).logits[0].to(torch.float32)
    with open(a.out, "wb") as f:
        f.write(logits.contiguous().numpy().astype("<f4").tobytes())
    kernel_diff = float((kernel - logits).abs().max())
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "gptqmodel": gptqmodel.__version__,
                "quantized_modules": len(bits),
                "kernel_f16_max_abs_diff": kernel_diff,
                "bits": bits,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
