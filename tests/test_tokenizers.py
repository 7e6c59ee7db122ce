import pytest
from transformers import BertTokenizerFast

from kdpipe_kfp.cli import main
from kdpipe.config import load_config
from kdpipe.errors import TokenizerMismatch
from kdpipe.tokenizers import compare_tokenizers, validate_tokenizers
from tests.conftest import base_config

TEXTS = ["it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate ",
         "A Film by Jean-Luc GODARD, naïve & über-cool"]


@pytest.fixture(scope="module")
def vocab_file(minilm_path):
    return f"{minilm_path}/vocab.txt"


def save(tok, path):
    tok.save_pretrained(str(path))
    return str(path)


def test_same_tokenizer_matches(bert_tokenizer, vocab_file):
    other = BertTokenizerFast(vocab=vocab_file, do_lower_case=True)
    assert other.vocab_size == 30522  # not the 5-token trap of vocab_file=
    report = compare_tokenizers(bert_tokenizer, other, TEXTS)
    assert report["match"], report["problems"]
    assert report["texts_checked"] == 3


def test_cased_vs_uncased_is_caught(bert_tokenizer, vocab_file):
    cased = BertTokenizerFast(vocab=vocab_file, do_lower_case=False, strip_accents=False)
    report = compare_tokenizers(bert_tokenizer, cased, TEXTS)
    assert not report["match"]
    assert any("normalization" in p and "Hello WORLD" in p for p in report["problems"]), report["problems"]


def test_different_vocab_is_caught(bert_tokenizer, vocab_file, tmp_path):
    words = open(vocab_file).read().splitlines()
    words[2000], words[2001] = words[2001], words[2000]  # two ids swapped
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    swapped = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"), do_lower_case=True)
    report = compare_tokenizers(bert_tokenizer, swapped, TEXTS)
    assert not report["match"]
    assert "vocabularies differ" in report["problems"][0] and "same token, other id" in report["problems"][0]


def test_different_special_tokens_are_caught(bert_tokenizer, vocab_file):
    other = BertTokenizerFast(vocab=vocab_file, do_lower_case=True, cls_token="[unused0]")
    report = compare_tokenizers(bert_tokenizer, other, TEXTS)
    assert not report["match"]
    assert any("special tokens differ" in p and "cls_token" in p for p in report["problems"])
    assert any("encoding differs" in p or "normalization" in p for p in report["problems"])


def test_step_stops_before_training_with_example(bert_tokenizer, vocab_file, tmp_path, sst2_small):
    teacher = save(bert_tokenizer, tmp_path / "teacher")
    student = save(BertTokenizerFast(vocab=vocab_file, do_lower_case=False), tmp_path / "student")
    raw = base_config(teacher, *sst2_small)
    raw["student"] = {"model": student}
    with pytest.raises(TokenizerMismatch, match="tokenize differently") as e:
        validate_tokenizers(load_config(raw=raw), tmp_path / "report.json")
    assert "teacher [" in str(e.value) and "student [" in str(e.value)
    assert (tmp_path / "report.json").is_file()
    raw["student"] = {"model": save(bert_tokenizer, tmp_path / "same")}
    report = validate_tokenizers(load_config(raw=raw))
    assert report["match"] and report["texts_checked"] == 400  # every real training text of the subset


def test_cli_exit_codes(bert_tokenizer, vocab_file, tmp_path, sst2_small, capsys):
    teacher = save(bert_tokenizer, tmp_path / "t")
    same = save(BertTokenizerFast(vocab=vocab_file, do_lower_case=True), tmp_path / "s")
    cased = save(BertTokenizerFast(vocab=vocab_file, do_lower_case=False), tmp_path / "c")
    args = ["validate-tokenizers", "--teacher", teacher, "--data", sst2_small[0], "--text-column", "sentence"]
    assert main(args + ["--student", same]) == 0
    assert "400 real texts" in capsys.readouterr().out
    assert main(args + ["--student", cased]) == 2
    assert "normalization" in capsys.readouterr().err
    assert main(["validate-tokenizers", "--teacher", teacher, "--student", str(tmp_path / "missing")]) == 2
    assert "--student" in capsys.readouterr().err
