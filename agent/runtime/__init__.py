"""atoll.agent.runtime: a decoder (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Phi-3; Hugging Face
directories or GGUF files) serving many LoRA adapters in one batch.

    from atoll.agent.runtime import Engine, SamplingParams
    engine = Engine(model_dir, device="cpu", dtype="float32", lora_backend="torch")
    engine.add_adapter("tenant-a", "path/to/peft_dir")
    outs = engine.generate([[1, 5, 9], [1, 7]], adapters=["tenant-a", None],
                           sampling=SamplingParams(max_tokens=16, temperature=0.0))
"""

from .adapters import AdapterInfo
from .engine import Engine
from .request import Delta, GenerationOutput, RequestHandle
from .sampling import SamplingParams, TokenLogprob

__all__ = ["Engine", "SamplingParams", "GenerationOutput", "RequestHandle", "Delta", "AdapterInfo", "TokenLogprob"]
