"""The Alpaca prompt template Platypus trained with (the original repository's ``templates/alpaca.json``).

Kept exact, character for character: the fine-tuned adapter only answers well when asked in the format it was
trained on. Note that the Platypus2 model cards advertise a different inference format
(``### Instruction:\\n\\n<prompt>\\n\\n### Response:`` without the preamble); training uses this one.
"""

from __future__ import annotations

from typing import Optional

ALPACA = {
    "prompt_input": ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "prompt_no_input": ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    "response_split": "### Response:",
}

TEMPLATES = {"alpaca": ALPACA}


def get_template(name: str) -> dict[str, str]:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def render_prompt(instruction: str, input: Optional[str] = None, output: Optional[str] = None,
                  template: str = "alpaca") -> str:
    """The prompt as ``utils/prompter.py`` built it: the with-input variant only when ``input`` is non-empty, and
    the output (when given) appended directly after ``### Response:\\n``."""
    t = get_template(template)
    if input:
        text = t["prompt_input"].format(instruction=instruction, input=input)
    else:
        text = t["prompt_no_input"].format(instruction=instruction)
    return f"{text}{output}" if output else text


def response_of(generated: str, template: str = "alpaca") -> str:
    """The model's answer: the text after the template's response marker (``Prompter.get_response``)."""
    return generated.split(get_template(template)["response_split"], 1)[-1].strip()
