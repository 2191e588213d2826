"""Greedy continuation of a prompt by plain transformers on a depth-pruned
export (`dynapress export --config PRUNE_DIR/x.json`), to compare with
`dynapress generate --ids --ignore-eos` on the same directory.

usage: python scripts/depth_export_check.py EXPORT_DIR [PROMPT] [N]
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

d = sys.argv[1]
prompt = sys.argv[2] if len(sys.argv) > 2 else "def main():"
n = int(sys.argv[3]) if len(sys.argv) > 3 else 24
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
assert m.config.num_hidden_layers == len(m.model.layers)
ids = tok(prompt, return_tensors="pt").input_ids
out = m.generate(ids, max_new_tokens=n, do_sample=False)
print(json.dumps({"layers": len(m.model.layers), "prompt_ids": ids[0].tolist(),
                  "new_ids": out[0, ids.shape[1]:].tolist()}))
