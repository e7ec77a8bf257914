"""Shared fixtures: tiny random encoder/decoder models with a word-level tokenizer, toy items,
and access to the shared HellaSwag files."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

WORDS = (
    "the a man woman dog cat ball water boat car house tree river road kid girl boy he she they "
    "is are was runs jumps walks sits throws holds cuts paints plays rides swims climbs cleans "
    "then and with on in into over under to from of at by slowly quickly again while after "
    "red blue green big small long short old new happy tired"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def make_tokenizer():
    """Word-level fast tokenizer: pad id 0, BERT-style pair template with token type ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS + [".", ","])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="$A", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"],
                                   eos_token="[EOS]")


def make_items(n: int, seed: int = 0, min_len: int = 3, max_len: int = 14):
    """Random word items with varied context/ending lengths (exercises padding)."""
    from fedlora.data import Item

    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        Item(context=words(rng.randint(min_len, max_len)),
             endings=tuple(words(rng.randint(1, 8)) for _ in range(4)),
             label=rng.randrange(4), activity_label=rng.choice(["a", "b", "c"]))
        for _ in range(n)
    ]


def make_encoder(vocab_size: int, dropout: float = 0.0, seed: int = 0):
    from transformers import RobertaConfig, RobertaForMultipleChoice

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=160, type_vocab_size=2, pad_token_id=0,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return RobertaForMultipleChoice(cfg).eval()


def make_decoder(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=None, eos_token_id=4, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def make_lora_model(family: str, tokenizer, *, dropout: float = 0.0, lora_dropout: float = 0.0,
                    r: int = 4, seed: int = 0):
    from fedlora.config import LoraSection
    from fedlora.models import add_lora

    base = (make_encoder(len(tokenizer), dropout, seed) if family == "encoder"
            else make_decoder(len(tokenizer), seed))
    return add_lora(base, LoraSection(r=r, alpha=2.0 * r, dropout=lora_dropout), family, seed=seed)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def toy_items():
    return make_items(24)


def shared_file(rel: str) -> Path:
    """A file of the shared data folder; a clear failure (never a skip) when it is absent."""
    from fedlora.config import data_dir

    path = data_dir() / rel
    if not path.is_file():
        where = "CI" if os.environ.get("CI") == "true" else "this machine"
        pytest.fail(f"shared data file {path} is missing on {where}; set FEDLORA_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def hellaswag_val_items():
    from fedlora.data import read_items

    return read_items(shared_file("hellaswag/hellaswag_val_1000_original.jsonl"))
