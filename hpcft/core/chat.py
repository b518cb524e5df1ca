"""A model's own chat template, rendered for training: exact loss masks, and the end-of-turn token.

The public face (also what preference tuning uses for its ``messages`` rows):

* :class:`ChatRenderer` ``(tokenizer, enable_thinking=None)``
  - ``.prompt(msgs, tools=None) -> str``: what the model is given to answer after ``msgs``;
  - ``.turn(msgs, k, tools=None) -> Turn``: the prompt before assistant turn ``k`` exactly as the
    model sees it at that point, and the text it must produce (trained), end-of-turn token included;
  - ``.examples(msgs, tools=None, train_on="all") -> list[list[(text, trained)]]``: one or more
    token-exact training sequences for a conversation.
* :func:`end_of_turn` ``(tokenizer) -> str | None``: the token that ends an assistant turn.
* :func:`set_end_of_turn` ``(tokenizer, generation_config) -> str | None``: make it the EOS.

**How turns are located.** Assistant turn ``k`` is trained on ``render(msgs[:k+1])`` minus
``render(msgs[:k], add_generation_prompt=True)``: the reply as the template writes it, after
the prompt the model would see at that point. Several turns share one sequence only while each
turn's prompt starts with the text before it. Where the template rewrites history (Qwen3 drops
earlier ``<think>`` blocks; DeepSeek-R1 distills drop every reasoning block), the rest of the
conversation starts a new sequence whose prompt is the rewritten history, so every trained
token sits after exactly the text the model is given at inference.

**Thinking.** A reply without reasoning is never trained on an empty ``<think>\\n\\n</think>\\n\\n``
block: the template's empty block goes into the (masked) prompt, which is what Qwen3 puts in
its prompt with ``enable_thinking=False``. A template that opens ``<think>`` in its generation
prompt and drops reasoning from the reply (DeepSeek-R1 distills) gets the reasoning back in the
trained text. ``enable_thinking`` is passed to the template when set; ``False`` also drops the
data's reasoning (as LLaMA-Factory does), so those rows train the non-thinking mode.

**End of turn.** A reply is trained through its end-of-turn token and no further: what the
template writes after it (ChatML's newline, Phi-3.5's ``\n`` and, at the end of the text, its
``<|endoftext|>``, Command-R7B's next chatbot header) is not trained and starts the next
prompt, so such a conversation stays one sequence. The end-of-turn token is the first special
token after a reply, or the EOS where it closes every turn after markers of its own
(Command-R7B: ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``). A reply that the template does not close with a special token (GLM-4 marks
the end of a reply with the next turn's ``<|user|>``, or ``<|observation|>`` after a tool call)
gets the special token the template writes next appended (and left out of the next prompt), so
the model learns to stop.

**Tools.** The ``tools`` column goes to the template as ``tools=``; a template that reads tools
from a message instead (GLM-4) gets them on the system message, with each OpenAI tool call as
an assistant message ``{metadata: name, content: arguments}`` and each result an
``observation``, the form its fine-tuning code and LLaMA-Factory use. A template that ignores
the tools or drops a call is an error, never a silent loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from .errors import HpcftError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
SENTINEL = "\ue000hpcft-reply\ue001"


class ConversationError(HpcftError, ValueError):
    """A conversation the chat template cannot train on (one line; the caller names the row)."""


@dataclass
class Turn:
    prompt: str            # everything before the reply, as the model sees it
    reply: str             # what the model must produce (trained), end-of-turn token included
    rendered: str          # prompt + the reply as the template writes it (the end of the text so far)
    appended: str = ""     # the end token added to a reply the template leaves open (the next prompt starts with it)


def _template_errors() -> tuple[type[BaseException], ...]:
    from jinja2.exceptions import TemplateError

    return (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError)


def split_reasoning(content: Optional[str]) -> tuple[Optional[str], str]:
    """(reasoning or None, answer) of an assistant reply written ``<think>R</think>A``."""
    text = content or ""
    if THINK_CLOSE not in text:
        return None, text
    head, _, answer = text.partition(THINK_CLOSE)
    return head.split(THINK_OPEN)[-1], answer


def has_reasoning(m: dict) -> bool:
    """The data writes a think block for this reply (``reasoning_content``, or ``</think>`` in the
    content), even an empty one: then it is trained as written."""
    if isinstance(m.get("reasoning_content"), str):
        return True
    return split_reasoning(m.get("content") if isinstance(m.get("content"), str) else None)[0] is not None


def _special_tokens(tok) -> list[str]:
    names = set(getattr(tok, "all_special_tokens", []) or [])
    for added in (getattr(tok, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            names.add(str(added))
    return sorted((n for n in names if n), key=len, reverse=True)


def _first_special(text: str, specials: list[str]) -> Optional[str]:
    best: Optional[tuple[int, str]] = None
    for s in specials:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best[1] if best else None


def _end_of_turn(tok) -> tuple[Optional[str], bool]:
    """(token, closes): the special token after an assistant reply in the template's own rendering;
    closes is False when the template writes it only as the start of the next turn (GLM-4)."""
    if not getattr(tok, "chat_template", None):
        return tok.eos_token, True
    specials = _special_tokens(tok)
    user = {"role": "user", "content": "Hi"}
    reply = {"role": "assistant", "content": SENTINEL}
    try:
        text = tok.apply_chat_template([user, reply], tokenize=False)
        after = text[text.index(SENTINEL) + len(SENTINEL):]
        found = _first_special(after, specials)
        try:
            text3 = tok.apply_chat_template([user, reply, user], tokenize=False)
        except _template_errors():
            text3 = ""
        at = text3.find(SENTINEL) + len(SENTINEL)
        between = text3[at:text3.find(user["content"], at)] if text3 else ""
        if found and tok.eos_token and tok.eos_token in between and tok.eos_token in after:
            # the EOS closes each turn, after markers of its own (Command-R7B: <|END_RESPONSE|><|END_OF_TURN_TOKEN|>)
            return tok.eos_token, True
        if found:
            return found, True
        found = _first_special(between, specials)
        if found:
            return found, False
    except (*_template_errors(), ValueError):
        pass  # a template that cannot render the probe: the tokenizer's EOS is the best guess
    return tok.eos_token, True


def end_of_turn(tokenizer) -> Optional[str]:
    """The token that ends an assistant turn under the tokenizer's chat template (``<|im_end|>``
    for ChatML/Qwen/InternLM2.5, ``<|eot_id|>`` for Llama-3, ``</s>`` for Mistral,
    ``<｜end▁of▁sentence｜>`` for DeepSeek-R1 distills, ``<|user|>`` for GLM-4); the EOS token
    when there is no template."""
    return _end_of_turn(tokenizer)[0]


def set_end_of_turn(tokenizer, generation_config=None) -> Optional[str]:
    """Make the end-of-turn token stop generation: first in ``generation_config.eos_token_id``
    (keeping the ids already there) and, when the template closes each reply with it, the
    tokenizer's EOS. A base model trained on ChatML (EOS ``<|endoftext|>``) then stops at
    ``<|im_end|>``. Returns a line saying what changed, or None when nothing did."""
    eot, closes = _end_of_turn(tokenizer)
    if not eot:
        return None
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    if eot_id is None or eot_id == getattr(tokenizer, "unk_token_id", None):
        return None
    changed = []
    if closes and tokenizer.eos_token != eot:
        changed.append(f"tokenizer EOS {tokenizer.eos_token} -> {eot}")
        tokenizer.eos_token = eot
    if generation_config is not None:
        ids = generation_config.eos_token_id
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        if eot_id not in ids:
            generation_config.eos_token_id = [eot_id, *ids] if ids else eot_id
            changed.append(f"generation EOS + {eot}")
    return f"end of turn {eot}: " + ", ".join(changed) if changed else None


class ChatRenderer:
    """Renders conversations with the tokenizer's chat template for training (see the module
    docstring). ``msgs`` are OpenAI-style dicts: role, content (None beside tool_calls),
    tool_calls, reasoning_content."""

    def __init__(self, tokenizer, enable_thinking: Optional[bool] = None):
        self.tok = tokenizer
        self.enable_thinking = enable_thinking
        self.eot, self.eot_closes = _end_of_turn(tokenizer)
        self.specials = _special_tokens(tokenizer)
        template = getattr(tokenizer, "chat_template", None) or ""
        # GLM-4's template reads tools from a message and writes a call as <|assistant|>{name}\n{args}
        self.glm_tools = "item['tools']" in template
        # a template that does not read reasoning_content would drop it: it goes into the content instead
        self.reads_reasoning = "reasoning_content" in template

    # ------------------------------------------------------------------ rendering
    def render(self, msgs: list[dict], gen: bool, tools: Optional[list] = None) -> str:
        kw: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kw["enable_thinking"] = self.enable_thinking
        if tools:
            kw["tools"] = tools
        msgs = [_plain_message(m) for m in msgs]
        try:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)
        except _template_errors() as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConversationError(f"the model's chat template cannot render this conversation: {first}") from None

    def _prepared(self, msgs: list[dict]) -> list[dict]:
        out = []
        for m in msgs:
            if m.get("role") == "assistant" and self.enable_thinking is False and has_reasoning(m):
                # enable_thinking: false trains the non-thinking mode: drop the data's reasoning
                m = {k: v for k, v in m.items() if k != "reasoning_content"}
                m["content"] = split_reasoning(m.get("content"))[1].lstrip("\n")
            elif isinstance(m.get("reasoning_content"), str) and not self.reads_reasoning:
                # a template that does not read reasoning_content would drop it: write it as <think>
                reasoning = m["reasoning_content"].strip("\n")
                m = {k: v for k, v in m.items() if k != "reasoning_content"}
                m["content"] = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{(m.get('content') or '').lstrip()}"
            out.append(m)
        return out

    def prompt(self, msgs: list[dict], tools: Optional[list] = None) -> str:
        """The text a model is given to answer the conversation so far (generation)."""
        msgs, tools = self._tools_in_messages(msgs, tools)
        return self.render(self._prepared(msgs), True, tools)

    def _tools_in_messages(self, msgs: list[dict], tools: Optional[list]) -> tuple[list[dict], Optional[list]]:
        """GLM-4's form (as its repository's fine-tuning code and LLaMA-Factory write it): the tools
        on the system message, each call an assistant message ``{metadata: name, content: arguments
        JSON}``, each result an ``observation``; other templates take the OpenAI form as it is."""
        if not self.glm_tools:
            return msgs, tools
        import json

        out: list[dict] = []
        for m in msgs:
            if m.get("role") == "assistant" and m.get("tool_calls"):
                if m.get("content"):
                    out.append({"role": "assistant", "content": m["content"]})
                for call in m["tool_calls"]:
                    fn = call.get("function", call)
                    args = fn.get("arguments")
                    out.append({"role": "assistant", "metadata": fn.get("name"),
                                "content": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)})
            elif m.get("role") == "tool":
                out.append({"role": "observation", "content": m.get("content") or ""})
            else:
                out.append(m)
        if tools:
            if out and out[0].get("role") == "system":
                out[0] = dict(out[0], tools=tools)
            else:
                out.insert(0, {"role": "system", "content": "", "tools": tools})
        return out, None

    # ------------------------------------------------------------------ one turn
    def turn(self, msgs: list[dict], k: int, tools: Optional[list] = None) -> Turn:
        """Assistant turn ``k``: the prompt the model sees before it and the reply it must produce."""
        msgs = self._prepared(msgs)
        m = msgs[k]
        if m.get("role") != "assistant":
            raise ConversationError(f"turn {k + 1} is {m.get('role')}'s, not the assistant's")
        if k == 0:
            raise ConversationError("the conversation opens with an assistant turn; nothing prompts it")
        prompt = self.render(msgs[:k], True, tools)
        try:
            full = self.render(msgs[:k + 1], False, tools)
        except ConversationError as exc:
            if not m.get("tool_calls"):
                raise
            raise ConversationError(f"the model's chat template cannot render the tool call "
                                    f"{', '.join(map(repr, _call_names(m)))} ({str(exc).rpartition(': ')[2]})") from None
        thought = has_reasoning(m)
        if full.startswith(prompt):
            reply = full[len(prompt):]
        elif m.get("tool_calls"):  # a tool call the template writes elsewhere, or not at all
            raise ConversationError("the model's chat template cannot render this tool call as a reply "
                                    f"({', '.join(_call_names(m))})")
        else:
            reply = self._reply_without_system(msgs, k, tools)
            if reply is None:
                prompt, reply = self._reopened(msgs, k, prompt, tools)
        if not thought:  # the template's empty think block belongs to the prompt, not the reply
            empty = EMPTY_THINK.match(reply)
            if empty:
                prompt, reply = prompt + empty.group(0), reply[empty.end():]
        if self.eot_closes and self.eot and self.eot in reply:  # what follows is the next prompt's, untrained
            reply = reply[:reply.index(self.eot) + len(self.eot)]
        rendered = prompt + reply
        self._check_tool_calls(m, reply)
        end = "" if self._closes(reply) else self._end_after(msgs, k, rendered, tools)
        return Turn(prompt, reply + end, rendered, end)

    def _closes(self, reply: str) -> bool:
        """The reply ends with a special token (its end of turn), maybe followed by whitespace."""
        tail = reply.rstrip()
        return any(tail.endswith(s) for s in self.specials) or bool(self.eot and self.eot in reply)

    def _end_after(self, msgs: list[dict], k: int, rendered: str, tools: Optional[list]) -> str:
        """The token that ends an open reply: the special token the template writes next (GLM-4:
        ``<|user|>``, or ``<|observation|>`` after a tool call), read from the next turn, or from a
        probe turn after the last reply."""
        nxt = msgs[k + 1] if k + 1 < len(msgs) else {
            "role": "observation" if msgs[k].get("metadata") else "tool" if msgs[k].get("tool_calls") else "user",
            "content": "x"}
        try:
            text = self.render(msgs[:k + 1] + [nxt], False, tools)
        except ConversationError:
            return self.eot or ""
        found = _first_special(text[len(rendered):], self.specials) if text.startswith(rendered) else None
        return found or self.eot or ""

    def _reply_without_system(self, msgs: list[dict], k: int, tools: Optional[list]) -> Optional[str]:
        """The reply as the template writes it when the system message moves with the conversation
        (Mistral's v3 template puts it in the last user turn, and drops it once an assistant turn
        is last): located without the system message, where the prompt is a prefix again."""
        if not msgs or msgs[0].get("role") != "system" or k < 2:
            return None
        rest = msgs[1:]
        prompt = self.render(rest[:k - 1], True, tools)
        full = self.render(rest[:k], False, tools)
        return full[len(prompt):] if full.startswith(prompt) else None

    def _reopened(self, msgs: list[dict], k: int, prompt: str, tools: Optional[list]) -> tuple[str, str]:
        """A generation prompt that opens a block the rendered reply does not continue (DeepSeek-R1
        distills prefill ``<think>\\n`` and drop the reasoning from the reply): rebuild the reply
        from the data after that opening."""
        m = msgs[k]
        probe = self.render(msgs[:k] + [{"role": "assistant", "content": SENTINEL}], False, tools)
        at = probe.find(SENTINEL)
        if at < 0 or not prompt.startswith(probe[:at]) or m.get("tool_calls"):
            raise ConversationError("the chat template renders a reply that does not continue its own "
                                  "generation prompt, so the reply cannot be located for loss masking")
        opened, suffix = prompt[at:], probe[at + len(SENTINEL):]
        if opened.strip() != THINK_OPEN:
            raise ConversationError(f"the chat template's generation prompt ends with {opened!r}, which its "
                                  "rendered replies do not start with; the reply cannot be located")
        reasoning = m.get("reasoning_content") if isinstance(m.get("reasoning_content"), str) else None
        answer = m.get("content") or ""
        if reasoning is None:
            reasoning, answer = split_reasoning(answer)
        if reasoning is None:  # no think block in the data: the closing one goes to the prompt, untrained
            return prompt + f"\n{THINK_CLOSE}\n\n", answer.lstrip("\n") + suffix
        return prompt, reasoning.strip("\n") + f"\n{THINK_CLOSE}\n\n" + answer.lstrip("\n") + suffix

    @staticmethod
    def _check_tool_calls(m: dict, reply: str) -> None:
        for name in _call_names(m):
            if name not in reply:
                raise ConversationError(f"the model's chat template drops the tool call {name!r} from the reply "
                                      "(it cannot render tool calls)")

    def check_tools(self, msgs: list[dict], tools: Optional[list]) -> None:
        """A ``tools`` column the template ignores is an error, not a silent drop."""
        if not tools:
            return
        first = msgs[:1] if msgs and msgs[0].get("role") == "system" else []
        head = first + [next((x for x in msgs if x.get("role") == "user"), {"role": "user", "content": ""})]
        if self.render(head, True, tools) == self.render(head, True, None):
            raise ConversationError("the model's chat template ignores the `tools` column (it has no tool support)")

    def completion(self, prompt_msgs: list[dict], reply_msgs: list[dict], tools: Optional[list] = None
                   ) -> tuple[str, str]:
        """(prompt, completion) for preference tuning, as TRL splits them: the generation prompt
        after ``prompt_msgs`` (what the model sees at inference), and everything the template
        writes after it for ``reply_msgs`` (every message of a multi-message reply, through the
        last reply's end of turn). Each reply is located after its own prompt (:meth:`turn`), so
        what the template adds there for this reply alone (Qwen3's empty think block for a reply
        without reasoning; an R1 distill's ``</think>`` closing the prefilled block) belongs to
        the completion, and the rejected reply is never given the chosen one's prompt."""
        prompt = self.prompt(prompt_msgs, tools)
        msgs, tools = self._tools_in_messages(prompt_msgs + reply_msgs, tools)
        t = self.turn(msgs, len(msgs) - 1, tools)
        if not t.prompt.startswith(prompt):
            raise ConversationError("the chat template writes this reply after a prompt other than its own generation "
                                    "prompt (it rewrites the conversation), so the reply cannot be scored after it")
        return prompt, t.prompt[len(prompt):] + t.reply

    # ------------------------------------------------------------------ a conversation
    def examples(self, msgs: list[dict], tools: Optional[list] = None, train_on: str = "all"
                 ) -> list[list[tuple[str, bool]]]:
        """Training sequences as [(text, trained)] pieces: every assistant turn trained (or only the
        last with ``train_on="last"``), each after the exact prompt the model sees at that turn."""
        msgs, tools = self._tools_in_messages(msgs, tools)
        self.check_tools(msgs, tools)
        turns = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
        if train_on == "last":
            turns = turns[-1:]
        out: list[list[tuple[str, bool]]] = []
        cur: list[tuple[str, bool]] = []
        done, prev_end = "", ""
        for k in turns:
            t = self.turn(msgs, k, tools)
            seg = t.prompt[len(done):] if cur and t.prompt.startswith(done) else None
            if seg is not None and prev_end:
                seg = seg[len(prev_end):] if seg.startswith(prev_end) else None
            if seg is None:  # the template rewrote the history (or cannot continue): a new sequence
                if cur:
                    out.append(cur)
                cur, seg = [], t.prompt
            cur += [(seg, False), (t.reply, True)]
            done, prev_end = t.rendered, t.appended
        if cur:
            out.append(cur)
        return out


def _plain_message(m: dict) -> dict:
    """None-valued keys dropped (as transformers 5 does, 4.x not) and a missing content ``""``:
    templates that concatenate it (the original Qwen3's) cannot render None beside tool calls."""
    out = {k: v for k, v in m.items() if v is not None}
    if "content" not in out and "role" in out:
        out["content"] = ""
    return out


def _call_names(m: dict) -> list[str]:
    names = []
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        if isinstance(fn, dict) and fn.get("name"):
            names.append(str(fn["name"]))
    return names


# --------------------------------------------------------------------------- the template alone (login side)

class TemplateTokenizer:
    """A model folder's chat template and special tokens, read from ``tokenizer_config.json`` (and
    ``chat_template.jinja``) and rendered the way transformers does (a sandboxed jinja2
    environment with ``tojson``, ``raise_exception`` and ``strftime_now``), without transformers:
    what the pre-flight needs to try a data file's conversations on the model's template. It has
    the parts of a tokenizer :class:`ChatRenderer` uses, except token ids. The template is
    somebody else's program run on the login node: it renders under a time and a size limit
    (:mod:`hpcft.core.chat_sandbox`), past which :class:`~hpcft.core.chat_sandbox.RenderLimit`
    ("chat template of MODEL: rendering exceeded 2 s; refused") ends the pre-flight."""

    def __init__(self, template: str, specials: dict[str, Optional[str]], special_tokens: list[str],
                 model: str = "the model", **limits: Any):
        from .chat_sandbox import LimitedEnvironment

        # rendered under a time and size limit (limits: seconds, total_seconds, chars; see chat_sandbox)
        self._env = LimitedEnvironment(model, **limits)
        self.model = model
        self.chat_template = template
        self._compiled = self._env.compile_template(template)
        self.specials = specials
        self.bos_token, self.eos_token = specials.get("bos_token"), specials.get("eos_token")
        self.all_special_tokens = special_tokens
        self.added_tokens_decoder: dict = {}

    @classmethod
    def from_folder(cls, folder) -> Optional["TemplateTokenizer"]:
        """The folder's template, or None when it has none (or one this renderer cannot compile)."""
        import json
        from pathlib import Path

        from jinja2.exceptions import TemplateError

        folder = Path(folder)
        try:
            cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if isinstance(t, dict)
                             and t.get("name") == "default"), None)
        jinja_file = folder / "chat_template.jinja"
        if not isinstance(template, str) and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        if not isinstance(template, str) or not template.strip():
            return None

        def text(v: Any) -> Optional[str]:
            return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None

        specials = {k: text(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        names = [t for t in specials.values() if t]
        names += [text(t) for t in cfg.get("additional_special_tokens") or [] if text(t)]
        names += [t.get("content") for t in (cfg.get("added_tokens_decoder") or {}).values()
                  if isinstance(t, dict) and t.get("special") and t.get("content")]
        try:
            return cls(template, specials, sorted(set(names)), model_name(folder))
        except TemplateError:
            return None  # e.g. a {% generation %} block: the worker renders it with transformers

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False,
                            tools: Optional[list] = None, **kwargs: Any) -> str:
        # keys whose value is None are dropped, as transformers does (gpt-oss's template tests them for presence)
        messages = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in messages]
        return self._env.render(self._compiled, (messages, tools, kwargs), messages=messages, tools=tools,
                                add_generation_prompt=add_generation_prompt,
                                **{k: v for k, v in self.specials.items() if v is not None}, **kwargs)


def model_name(folder) -> str:
    """The repo id of a staged model folder (``.../models--ORG--NAME/snapshots/SHA``), else the folder."""
    from pathlib import Path

    folder = Path(folder)
    repo = folder.parent.parent.name if folder.parent.name == "snapshots" else ""
    return repo.removeprefix("models--").replace("--", "/") if repo.startswith("models--") else str(folder)
