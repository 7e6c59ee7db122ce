import numpy as np
import pytest

from kdpipe.artifacts import load_prepared
from kdpipe.config import load_config
from kdpipe.data import MULTI, SINGLE, load_and_validate, preprocess
from kdpipe.errors import DataError
from tests.conftest import base_config


def data_cfg(teacher, train, validation, **data):
    raw = base_config(teacher, train, validation)
    raw["data"].update(data)
    return load_config(raw=raw)


def test_sst2_tsv(shared_data, tiny_bert):
    cfg = data_cfg(tiny_bert, str(shared_data / "sst2/train.tsv"), str(shared_data / "sst2/dev.tsv"),
                   max_train_samples=500)
    splits, schema = load_and_validate(cfg.data)
    assert schema.problem_type == SINGLE and schema.label_names == ["0", "1"]
    texts, labels = splits["validation"]
    assert len(texts) == 872 and set(labels) == {0, 1}
    assert len(splits["train"][0]) == 500


def test_goemotions_headerless_multilabel(shared_data, tiny_bert, tmp_path):
    # A subset keeps the test quick; take rows until every emotion is present.
    lines = (shared_data / "goemotions/train.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:6000]) + "\n")
    cfg = data_cfg(tiny_bert, str(tmp_path / "train.tsv"), str(shared_data / "goemotions/dev.tsv"),
                   header=False, column_names=["text", "labels", "id"], text_column="text", label_columns=["labels"],
                   label_names_file=str(shared_data / "goemotions/emotions.txt"))
    splits, schema = load_and_validate(cfg.data)
    assert schema.problem_type == MULTI and schema.num_labels == 28 and schema.label_names[27] == "neutral"
    texts, labels = splits["validation"]
    assert labels.shape == (5426, 28)
    # Row counts per label-count from SOURCE.md: dev has 809 rows with two labels.
    assert int((labels.sum(1) == 2).sum()) == 809
    assert not any('""' in t for t in texts)  # CSV-quoted fields are unquoted (doubled quotes undone)


def test_jigsaw_csv_six_columns_embedded_newlines(shared_data, tiny_bert):
    path = str(shared_data / "jigsaw/train_sample300.csv")
    cols = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    cfg = data_cfg(tiny_bert, path, path, text_column="comment_text", label_columns=cols)
    splits, schema = load_and_validate(cfg.data)
    assert schema.problem_type == MULTI and schema.label_names == cols
    texts, labels = splits["train"]
    assert len(texts) == 300 and "\n" in texts[0]
    assert labels.sum(0).tolist() == [31, 3, 18, 2, 17, 5]  # SOURCE.md positive counts


def test_preprocess_writes_tokenized_splits(sst2_small, tiny_bert, tmp_path):
    cfg = load_config(raw=base_config(tiny_bert, *sst2_small))
    info = preprocess(cfg, tmp_path / "prep")
    prep = load_prepared(tmp_path / "prep")
    assert info["sizes"] == {"train": 400, "validation": 120}
    lengths = {len(x) for x in prep.dataset["train"]["input_ids"]}
    assert len(lengths) > 5 and max(lengths) <= 64  # dynamic padding: rows keep their own length
    again = preprocess(cfg, tmp_path / "prep2")
    assert again["fingerprints"] == info["fingerprints"]
    other = preprocess(load_config(raw=base_config(tiny_bert, *sst2_small), overrides=["data.max_length=16"]),
                       tmp_path / "prep3")
    assert other["fingerprints"]["train"] != info["fingerprints"]["train"]


def test_string_labels_and_jsonl(tmp_path, tiny_bert):
    rows = [{"text": f"review {i}", "label": ["neg", "pos", "mixed"][i % 3]} for i in range(30)]
    import json

    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = data_cfg(tiny_bert, str(tmp_path / "t.jsonl"), str(tmp_path / "t.jsonl"), text_column="text")
    splits, schema = load_and_validate(cfg.data)
    assert schema.label_names == ["mixed", "neg", "pos"]
    assert splits["train"][1][:3].tolist() == [1, 2, 0]


# ------------------------------------------------------------ bad input: one clear message each

def write(path, text):
    path.write_text(text)
    return str(path)


GOOD = "sentence\tlabel\na fine film\t1\na dull film\t0\nquite good\t1\nnot good\t0\n"


@pytest.mark.parametrize("train, pattern", [
    ("sentence\tlabel\na fine film\t1\n\t0\nok\t1\n", r"train.tsv: column 'sentence', row 2 .*empty or missing text"),
    ("sentence\tlabel\na fine film\t1\n   \t0\nok\t1\n", r"train.tsv: column 'sentence', row 2 .*empty or missing text"),
    ("text\tlabel\na fine film\t1\nbad\t0\n", r"train.tsv: column\(s\) \['sentence'\] not found; the file has columns \['text', 'label'\]"),
    ("sentence\tlabel\n", r"train.tsv: the train split is empty"),
    ("sentence\tlabel\ngood\t1\nbad\t0\nmeh\t\n", r"train.tsv: column 'label', row 3 .*'meh'.*missing label"),
    # The header: a column named twice, a near miss, no header at all, columns swapped.
    ("sentence\tlabel\tlabel\na fine film\t1\t0\nbad\t0\t1\n",
     r"train.tsv: the header names column\(s\) \['label'\] more than once"),
    ("sentence\tlabel\t\na fine film\t1\t\nbad\t0\t\n", r"train.tsv: the header leaves column\(s\) \[3\] .*without a name"),
    ("Sentence \tlabel\na fine film\t1\nbad\t0\n", r"\['sentence'\] not found.*'sentence' is not 'Sentence '"),
    ("a fine film with a plot\t1\nbad\t0\nok\t1\n",
     r"not found.*the first row looks like data, not a header: .*data.header: false and data.column_names"),
    ("sentence\tlabel\n1\ta fine film\n0\tbad\n",
     r"train.tsv: column 'sentence' holds only numbers \(row 1 .*\). Is data.text_column the column"),
    ("sentence\tlabel\n" + "".join(f"film number {i}\tgreat film number {i}\n" for i in range(30)),
     r"train.tsv: column 'label' has 30 distinct values in 30 rows .*not class labels. Is data.label_columns"),
])
def test_bad_train_files(tmp_path, tiny_bert, train, pattern):
    cfg = data_cfg(tiny_bert, write(tmp_path / "train.tsv", train), write(tmp_path / "dev.tsv", GOOD),
                   text_column="sentence")
    with pytest.raises(DataError, match=pattern):
        load_and_validate(cfg.data)


@pytest.mark.parametrize("data, pattern", [
    ({"text_column": "label"}, r"data: data.text_column 'label' is also in data.label_columns"),
    ({"label_columns": ["a", "b", "a"]}, r"data.label_columns names \['a'\] more than once"),
    ({"header": False, "column_names": ["text", "label", "text"]}, r"data.column_names names a column more than once"),
])
def test_columns_the_config_cannot_mean(tmp_path, tiny_bert, data, pattern):
    from kdpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        data_cfg(tiny_bert, write(tmp_path / "train.tsv", GOOD), write(tmp_path / "dev.tsv", GOOD), **data)


def test_label_outside_label_set(tmp_path, tiny_bert):
    cfg = data_cfg(tiny_bert, write(tmp_path / "train.tsv", GOOD),
                   write(tmp_path / "dev.tsv", GOOD + "surprising\t2\n"), text_column="sentence")
    with pytest.raises(DataError, match=r"dev.tsv: column 'label', row 5 .*'surprising'.*label '2' is outside the label set"):
        load_and_validate(cfg.data)


def test_label_without_train_examples(tmp_path, tiny_bert):
    cfg = data_cfg(tiny_bert, write(tmp_path / "train.tsv", GOOD), write(tmp_path / "dev.tsv", GOOD),
                   text_column="sentence", label_names=["neg", "pos", "neutral"])
    with pytest.raises(DataError, match=r"train.tsv: label\(s\) \['neutral'\] have no examples in the train split"):
        load_and_validate(cfg.data)


def test_multilabel_flag_not_binary(tmp_path, tiny_bert):
    train = write(tmp_path / "train.csv", "text,a,b\nx one,1,0\nx two,0,1\nx three,2,1\n")
    cfg = data_cfg(tiny_bert, train, train, text_column="text", label_columns=["a", "b"])
    with pytest.raises(DataError, match=r"train.csv: column 'a', row 3 .*'x three'.*label value 2 is not 0 or 1"):
        load_and_validate(cfg.data)


def test_unreadable_and_unknown_format(tmp_path, tiny_bert):
    binary = tmp_path / "train.parquet"
    binary.write_bytes(b"\x00\x01 not parquet at all")
    cfg = data_cfg(tiny_bert, str(binary), write(tmp_path / "dev.tsv", GOOD), text_column="sentence")
    with pytest.raises(DataError, match=r"train.parquet: cannot read it as parquet"):
        load_and_validate(cfg.data)
    cfg = data_cfg(tiny_bert, write(tmp_path / "train.xlsx", "x"), write(tmp_path / "dev2.tsv", GOOD),
                   text_column="sentence")
    with pytest.raises(DataError, match=r"train.xlsx: cannot tell the format.*set data.format"):
        load_and_validate(cfg.data)


def test_hub_dataset_unreachable_is_a_clear_error(tiny_bert, sst2_small):
    raw = base_config(tiny_bert, *sst2_small)
    raw["data"].update({"dataset": "glue", "dataset_config": "sst2", "train": "train", "validation": "validation"})
    cfg = load_config(raw=raw)
    with pytest.raises(DataError, match=r"dataset 'glue' \(config 'sst2'\) split 'train': cannot load it"):
        load_and_validate(cfg.data)


def test_single_class_rejected(tmp_path, tiny_bert):
    one = write(tmp_path / "train.tsv", "sentence\tlabel\nfine\t1\ngood\t1\n")
    cfg = data_cfg(tiny_bert, one, one, text_column="sentence")
    with pytest.raises(DataError, match="single class"):
        load_and_validate(cfg.data)


def test_unlabelled_test_split_allowed(tmp_path, tiny_bert, shared_data):
    cfg = data_cfg(tiny_bert, write(tmp_path / "train.tsv", GOOD), write(tmp_path / "dev.tsv", GOOD),
                   text_column="sentence", test=str(shared_data / "sst2/test.tsv"))
    splits, _ = load_and_validate(cfg.data)
    assert splits["test"][1] is None and len(splits["test"][0]) == 1821
    assert np.asarray(splits["train"][1]).tolist() == [1, 0, 1, 0]


def test_transfer_set_draws_on_train_and_unlabeled_only(sst2_small, tiny_bert, tmp_path, shared_data):
    """Augmented copies come from training texts only; unlabeled rows that are also evaluation texts are dropped;
    validation and test are the same with or without a transfer set."""
    from kdpipe.augment import augment_texts
    from kdpipe.config import AugmentConfig
    from kdpipe.data import TRANSFER, load_and_validate, transfer_texts

    train, dev = sst2_small
    all_train = (shared_data / "sst2/train.tsv").read_text().splitlines()
    dev_rows = (shared_data / "sst2/dev.tsv").read_text().splitlines()
    write(tmp_path / "unlabeled.tsv", "sentence\n" + "\n".join([r.split("\t")[0] for r in all_train[1001:1101]]
                                                               + [r.split("\t")[0] for r in dev_rows[1:4]]) + "\n")
    raw = base_config(tiny_bert, train, dev)
    plain = load_config(raw=raw)
    with_transfer = load_config(raw=raw, overrides=[f"data.unlabeled={tmp_path / 'unlabeled.tsv'}",
                                                    "distillation.augment.factor=2"])
    splits, _ = load_and_validate(with_transfer.data)
    texts, info = transfer_texts(with_transfer, splits, "[MASK]")
    assert info == {"unlabeled": 100, "unlabeled_dropped_in_eval": 3, "augmented": 800}
    evaluation = set(splits["validation"][0])
    assert not evaluation & set(texts)
    train_words = {w for t in splits["train"][0] for w in t.split()} | {"[MASK]"}
    augmented = texts[100:]
    assert all(set(t.split()) <= train_words for t in augmented)
    assert augmented == augment_texts(splits["train"][0], with_transfer.distillation.augment, "[MASK]")  # seeded
    assert augmented != augment_texts(splits["train"][0], AugmentConfig(factor=2, seed=1), "[MASK]")
    a = preprocess(plain, tmp_path / "plain")
    b = preprocess(with_transfer, tmp_path / "transfer")
    assert {k: v for k, v in b["fingerprints"].items() if k != TRANSFER} == a["fingerprints"]
    assert b["sizes"][TRANSFER] == 900 and TRANSFER not in a["sizes"]
    prep = load_prepared(tmp_path / "transfer")
    assert set(prep.dataset[TRANSFER].column_names) == {"input_ids", "token_type_ids", "attention_mask"}


def test_recent_texts_of_a_drift_retrain_are_deduplicated_held_out_and_capped(sst2_small, tiny_bert, tmp_path,
                                                                             shared_data):
    """A drift-triggered retrain's recent texts: duplicates and any training, validation or test text dropped;
    drift.holdout of the rest held out as the RECENT split (texts kept, for the teacher-judged comparison), at most
    drift.max_transfer_texts of the others added to the transfer set. The retrain key's fingerprints are those of
    the configured data alone, the same with or without recent texts."""
    from kdpipe.data import RECENT, TRANSFER, recent_rows

    train, dev = sst2_small
    cfg = load_config(raw=base_config(tiny_bert, train, dev),
                      overrides=["drift.holdout=0.25", "drift.max_transfer_texts=50"])
    splits, _ = load_and_validate(cfg.data)
    unseen = [r.split("\t")[0].strip() for r in (shared_data / "sst2/train.tsv").read_text().splitlines()[5001:5101]]
    recent = unseen + unseen[:10] + [" " + unseen[0] + " ", splits["train"][0][0], splits["validation"][0][1], "  "]
    held, transfer, counts = recent_rows(cfg, splits, recent)
    assert counts == {"given": 114, "dropped_duplicate_or_known": 14, "held_out": 25, "transfer": 50, "over_cap": 25}
    assert not set(held) & set(transfer) and set(held) | set(transfer) < set(unseen)
    assert (held, transfer) == recent_rows(cfg, splits, recent)[:2]  # seeded
    plain = preprocess(cfg, tmp_path / "plain")
    drifted = preprocess(cfg, tmp_path / "drifted", recent=recent)
    assert drifted["sizes"][RECENT] == 25 and drifted["sizes"][TRANSFER] == 50
    assert drifted["data_fingerprints"] == plain["data_fingerprints"] == plain["fingerprints"]
    assert {RECENT, TRANSFER} <= set(drifted["fingerprints"]) and drifted["transfer"]["recent"] == counts
    assert load_prepared(tmp_path / "drifted").dataset[RECENT]["text"] == held


def test_augmentation_operations():
    import random

    from kdpipe.augment import augment_text
    from kdpipe.config import AugmentConfig

    words = "a fine and moving film about grief".split()
    rng = random.Random(0)
    assert augment_text(words, rng, AugmentConfig(mask_prob=1.0, dropout_prob=0, swap_prob=0, ngram_prob=0), "[M]") \
        == " ".join(["[M]"] * 7)
    assert augment_text(words, rng, AugmentConfig(mask_prob=0, dropout_prob=0, swap_prob=0, ngram_prob=0), "[M]") \
        == " ".join(words)
    assert augment_text(words, rng, AugmentConfig(mask_prob=0, dropout_prob=1.0, swap_prob=0, ngram_prob=0), "[M]") \
        == "[M]"  # never empty
    ngram = augment_text(words, rng, AugmentConfig(mask_prob=0, dropout_prob=0, swap_prob=0, ngram_prob=1.0), "[M]")
    assert 1 <= len(ngram.split()) <= 5 and ngram in " ".join(words)
    swapped = augment_text(words, rng, AugmentConfig(mask_prob=0, dropout_prob=0, swap_prob=1.0, ngram_prob=0), "[M]")
    assert sorted(swapped.split()) == sorted(words) and swapped != " ".join(words)
