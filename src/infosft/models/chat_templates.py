"""Chat templates infosft knows better than TRL: SmolLM2's, with ``{% generation %}`` markers
for assistant-only loss."""

from __future__ import annotations

# SmolLM2-Instruct's own chat template, as the GGUF file carries it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same template with {% generation %} around each assistant answer and its <|im_end|>: it
# renders the same text, and lets TRL's assistant_only_loss mask everything else. It is used only
# while a dataset is tokenized (see training_chat_template): several inference engines reject
# the non-standard tag, so saved checkpoints keep the original.
SMOLLM2_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_chat_template(chat_template: str | None) -> str | None:
    """``chat_template`` with ``{% generation %}`` markers, for TRL's ``assistant_only_loss``.

    Known for SmolLM2's template (TRL patches many others itself); None for any other.
    """
    return SMOLLM2_TRAINING_CHAT_TEMPLATE if chat_template == SMOLLM2_CHAT_TEMPLATE else None
