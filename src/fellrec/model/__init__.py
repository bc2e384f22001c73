"""The split LLM of FELLRec's flexible storage strategy.

loading   local HF directories (Llama, Qwen2), the packaged SmolLM2 (GGUF -> safetensors cache), tiny test models
quantize  nf4 storage of the frozen server blocks (bitsandbytes), storage accounting
lora      peft LoRA on both sides, flat split-independent adapter names
blocks    running a slice of decoder blocks exactly as the Hugging Face forward does
link      the client-server boundary: the only way data crosses, every byte counted
split     ClientModule, ServerModule (LightningModules) and SplitModel (one base model, a view per client split)
adapters  AdapterStore: N clients' adapters, client and server parts apart, swapped by copying tensors
bench     the resource bench behind `fellrec bench split`

Names are imported lazily, so `import fellrec.model` stays cheap (no torch/transformers until used).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_base_model": "loading", "load_tokenizer": "loading", "cache_root": "loading",
    "BoundaryLink": "link", "LinkStats": "link",
    "ClientModule": "split", "ServerModule": "split", "SplitModel": "split", "SplitSides": "split",
    "resolve_split": "split",
    "AdapterStore": "adapters", "save_adapter": "adapters", "load_adapter": "adapters",
    "causal_lm_loss": "blocks", "position_ids_from_mask": "blocks",
    "run_bench_split": "bench", "format_bench_table": "bench",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fellrec.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fellrec.model.{_EXPORTS[name]}"), name)
