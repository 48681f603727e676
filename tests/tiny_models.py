"""Tiny, randomly initialised models built in code for the local-backend and embedder tests.

No download, no file from a hub: a word-level tokenizer over a fixed vocabulary (with a chat
template that handles ``add_generation_prompt`` and closes every turn with EOS, as TRL wants)
and a 2-layer Llama. Everything is deterministic given ``seed``.

Import as ``tiny_models`` (``tests/`` is on ``sys.path``: pytest's rootdir-relative import of
``tests/*.py`` and ``tests/backends/conftest.py`` put it there).
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a an is are was be good bad great poor answer question reply response helpful "
    "harmless honest correct wrong yes no maybe why how what when where who which "
    "hello world cat dog sun moon tree river code python list sort number score rate "
    "please explain write short long story poem fact true false because so and or not"
).split()
DIGITS = ["1", "2", "3", "4", "5"]
ROLES = ["system", "user", "assistant"]
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>", "<turn>"]
VOCAB = SPECIAL + ROLES + DIGITS + WORDS

# One turn: "<turn> ROLE content <eos>"; the generation prompt is "<turn> assistant".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<turn> {{ message['role'] }} {{ message['content'] }} {{ eos_token }} "
    "{% endfor %}"
    "{% if add_generation_prompt %}<turn> assistant {% endif %}"
)


def make_tokenizer(padding_side: str = "left"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<turn>"],
        padding_side=padding_side,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def llama_config(hidden_size: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, **overrides):
    from transformers import LlamaConfig

    tok_ids = {w: i for i, w in enumerate(VOCAB)}
    kwargs = dict(
        vocab_size=len(VOCAB),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        bos_token_id=tok_ids["<bos>"],
        eos_token_id=tok_ids["<eos>"],
        pad_token_id=tok_ids["<pad>"],
        initializer_range=0.2,  # peaked enough that greedy decoding has clear winners
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_causal_lm(seed: int = 0, **config_overrides):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**config_overrides)).eval()
    return model


def make_seq_cls(seed: int = 0, **config_overrides):
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(num_labels=1, **config_overrides)).eval()


def save(model, tokenizer, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def token_id(word: str) -> int:
    return VOCAB.index(word)


def conversation(prompt: str, response: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": prompt})
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


PROMPTS = [
    "hello",
    "please explain why the sun is good",
    "write a short poem",
    "what is the score of the answer",
    "how",
    "is the cat a dog or not because the moon and the tree and the river",
    "rate the reply",
]


def with_eos_bias(model, bias: float):
    """A copy of ``model`` whose lm_head adds ``bias`` to the EOS logit (to make EOS likely)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    old = model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        new.bias[model.config.eos_token_id] = bias
    model.lm_head = new
    return model.eval()


def greedy_reference(model, tokenizer, messages, max_tokens: int, stop_ids) -> list[int]:
    """Plain greedy decoding, one example, no padding, no KV cache: a full forward per token."""
    import torch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            tok = int(torch.argmax(logits))
            out.append(tok)
            if tok in stop_ids:
                break
    return out
