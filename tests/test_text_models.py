"""Tiny random BERT, RoBERTa, GPT-2 and LLaMA models saved to disk and loaded through dreamlr's text loader;
the builders and the synthetic data here are shared by the other text tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

from dreamlr.adapters import AdapterConfig, resolve_targets
from dreamlr.errors import UserError
from dreamlr.text.models import (
    head_parameter_names,
    load_causal_lm,
    load_classifier,
    resolve_model,
)
from dreamlr.text.train import attach_adapter

KINDS = ("bert", "roberta", "gpt2", "llama")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
POSITIVE = ["good", "great", "fun", "lovely"]
NEGATIVE = ["bad", "awful", "boring", "dull"]
FILLER = ["the", "movie", "film", "plot", "was", "is", "very", "quite", "and", "acting"]
QA = {"france": "paris", "italy": "rome", "germany": "berlin", "spain": "madrid", "japan": "tokyo"}
WORDS = POSITIVE + NEGATIVE + FILLER + list(QA) + list(QA.values()) + [
    "capital", "of", "what", "the", "###", "Instruction", "Response", ":", "country", "city"]


def word_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS, with each model family's special tokens (GPT-2 and LLaMA: no pad)."""
    vocab = {word: index for index, word in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind in ("bert", "roberta"):
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    elif kind == "llama":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
        special = dict(unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    else:
        special = dict(unk_token="[UNK]", bos_token="</s>", eos_token="</s>")
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if kind == "bert" else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_input_names=inputs, **special)


def build_tiny(kind: str, folder: Path) -> Path:
    """Save a tiny random `kind` model and its tokenizer to `folder`, as a hub checkpoint would be laid out:
    BERT/RoBERTa as bare encoders (no head), GPT-2/LLaMA as LMs."""
    tokenizer = word_tokenizer(kind)
    size = dict(vocab_size=len(tokenizer), num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2)
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=64,
                                     pad_token_id=tokenizer.pad_token_id, **size), add_pooling_layer=True)
    elif kind == "roberta":
        model = RobertaModel(RobertaConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=72,
                                           type_vocab_size=1, pad_token_id=tokenizer.pad_token_id, **size))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                           vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                                           eos_token_id=tokenizer.eos_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2,
                                             max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, **size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model(kind: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The folder of a tiny `kind` model, built once per test session."""
    folder = tmp_path_factory.getbasetemp() / f"tiny-{kind}"
    if not (folder / "config.json").is_file():
        build_tiny(kind, folder)
    return str(folder)


def sentiment_rows(count: int, seed: int = 0, labels: tuple[str, str] = ("neg", "pos")) -> list[dict]:
    """Synthetic reviews: fillers around one sentiment word; the label follows the word."""
    generator = torch.Generator().manual_seed(seed)

    def pick(words: list[str]) -> str:
        return words[int(torch.randint(len(words), (1,), generator=generator))]

    rows = []
    for index in range(count):
        positive = index % 2 == 0
        words = [pick(FILLER), pick(FILLER), pick(POSITIVE if positive else NEGATIVE), pick(FILLER)]
        rows.append({"sentence": " ".join(words), "label": labels[int(positive)]})
    return rows


def write_tsv(path: Path, rows: list[dict]) -> Path:
    columns = list(rows[0]) if rows else ["sentence", "label"]
    lines = ["\t".join(columns)] + ["\t".join(str(row[c]) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qa_rows() -> list[dict]:
    """Capital-city questions of different lengths (so that batches need padding)."""
    return [{"instruction": f"what is {'the ' * index}capital of {country}", "response": city}
            for index, (country, city) in enumerate(QA.items())]


def choice_rows() -> list[dict]:
    cities = list(QA.values())
    return [{"question": f"capital of {country}", "choices": cities[:3] if city in cities[:3] else [cities[0], city],
             "answer": city} for country, city in QA.items()]


@pytest.mark.parametrize("kind", KINDS)
def test_loader_builds_a_classifier_with_a_trainable_head_outside_the_adapter(kind, tmp_path_factory):
    torch.manual_seed(0)
    model, tokenizer = load_classifier(tiny_model(kind, tmp_path_factory), ["neg", "pos"])
    assert model.config.num_labels == 2 and model.config.id2label == {0: "neg", 1: "pos"}
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    head = head_parameter_names(model)
    assert head and all(name.startswith(("classifier.", "score.")) for name in head)

    names = attach_adapter(model, AdapterConfig(variant="lora", rank=2, targets="all-linear"), head)
    assert not any(name.startswith(("classifier", "score")) for name in names)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(head) <= trainable
    assert all(name in head or name.rpartition(".")[2] in ("lora_A", "lora_B") for name in trainable)
    batch = tokenizer(["the movie was good", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_roberta_head_dense_layer_is_not_an_adapter_target(tmp_path_factory):
    model, _ = load_classifier(tiny_model("roberta", tmp_path_factory), ["a", "b"])
    assert "classifier.dense" in resolve_targets(model, "all-linear")  # the preset alone would wrap it
    names = attach_adapter(model, AdapterConfig(rank=2, targets="all-linear"), head_parameter_names(model))
    assert "classifier.dense" not in names and "roberta.encoder.layer.0.attention.self.query" in names


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loader_gives_causal_lms_a_padding_token(kind, tmp_path_factory):
    model, tokenizer = load_causal_lm(tiny_model(kind, tmp_path_factory))
    assert tokenizer.pad_token == "</s>" and model.config.pad_token_id == tokenizer.pad_token_id


def test_head_only_targets_are_an_error(tmp_path_factory):
    model, _ = load_classifier(tiny_model("bert", tmp_path_factory), ["a", "b"])
    with pytest.raises(UserError, match="select only the task head"):
        attach_adapter(model, AdapterConfig(rank=2, targets=["classifier"]), head_parameter_names(model))


@pytest.mark.parametrize("source,message", [
    ("nobody/no-such-model", "not found locally, and the hub is offline; give a local folder or `minilm`"),
    ("./no/such/folder", "no such folder"),
])
def test_unknown_models_are_one_line_errors(source, message):
    with pytest.raises(UserError, match=message.replace("`", ".").replace("(", ".")):
        resolve_model(source)


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_minilm_resolves_to_the_packaged_weights():
    folder = Path(resolve_model("minilm"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
