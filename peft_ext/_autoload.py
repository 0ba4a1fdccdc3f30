"""The startup hook: installing peft-ext puts ``peft_ext_autoload.pth`` in site-packages, whose one line imports this
module when Python starts, so that PEFT knows SOFT_PROMPT in programs that never import peft_ext (lm-eval's
``--model hf --model_args peft=...``, TRL, ``AutoPeftModelForCausalLM``).

Importing peft_ext loads nothing heavy: it arms ``_registration``'s finder, which registers SOFT_PROMPT when the
program imports ``peft``. A failure to register (an untested peft, say) must not break a program that never asked
for peft_ext, so there it is one line on stderr and PEFT loads without SOFT_PROMPT.

The .pth line itself reads ``PEFT_EXT_AUTOLOAD`` before importing anything: ``0``, ``false``, ``no`` or ``off`` (any
case) turn the hook off, and then ``import peft_ext`` is again what registers SOFT_PROMPT. It also catches any error
here, printing one line: a broken install must not break every Python start.
"""

from . import _registration

_registration.autoload()
