"""A chat template with tool support, modelled on Qwen 2.5's (Hermes `<tool_call>` format), for a
tiny served model whose tools go through the template rather than Dukat's generic format."""

from __future__ import annotations

from pathlib import Path

HERMES_TEMPLATE = (
    "{%- if tools %}<|system|>\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{%- endif %}"
    "# Tools\n\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call></s>\n'
    "{%- elif messages[0]['role'] == 'system' %}<|system|>\n{{ messages[0]['content'] }}</s>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "<|user|>\n{{ message.content }}</s>\n"
    "{%- elif message.role == 'assistant' %}<|assistant|>\n{{ message.content or '' }}"
    "{%- for tool_call in message.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}</s>\n"
    "{%- elif message.role == 'tool' %}"
    "<|user|>\n<tool_response>\n{{ message.content }}\n</tool_response></s>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}"
)


def install_hermes_template(model_dir: Path) -> None:
    """Give the model in `model_dir` the Hermes-style template (transformers reads this file)."""
    (model_dir / "chat_template.jinja").write_text(HERMES_TEMPLATE)
