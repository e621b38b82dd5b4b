"""User text is text: a brain-token string typed in a message never becomes a brain token.

Brain tokens (``<brain_start>``, ``<brain_17>``, ``<brain_end>``, and any later ``<brain_...>`` token) enter a
prompt only through ``{"type": "fmri"}`` message parts. If the text of a message spelled one of them, the text
tokenizer would match it as the special token and the model would read brain codes nobody measured. So every
text part and string content is passed through `escape_brain_tokens` before the chat template sees it.

Choice: escape, not refuse. A zero-width space (U+200B) is put right after the ``<`` of every
``<{prefix}_...>`` string, so the message still reads the same to a person, a question such as "what does
<brain_5> mean?" still gets an answer, and a model reply that happens to spell such a string does not make the
next turn fail. The escaped text is tokenized as ordinary characters, never as a brain-token id; escaping is
idempotent.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: Inserted after the ``<`` of a brain-token string found in text, so the tokenizer cannot match it.
ESCAPE_CHAR = "\u200b"


@lru_cache(maxsize=16)
def _pattern(prefix: str) -> re.Pattern[str]:
    # Any <{prefix}_...> spelling: codes, start/end markers and tokens added later (e.g. <brain_fc_3>).
    return re.compile(r"<(?=" + re.escape(prefix) + r"_[^<>]*>)")


def escape_brain_tokens(text: str, prefix: str = "brain") -> str:
    """``text`` with every ``<{prefix}_...>`` string escaped (see the module doc); other text is unchanged."""
    if "<" not in text:
        return text
    return _pattern(prefix).sub("<" + ESCAPE_CHAR, text)
