"""Bad input gives a clear error naming the file, field or value, and writes nothing (issues #2, #7)."""
import numpy as np
import pytest

from diger.testing import N_ITEMS, small_config
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build(model, root, **extra):
    from recbole.data import data_preparation

    from diger.quick_start import load_dataset, make_config, resolve_model

    cfg = make_config(model, "toy", None, small_config(root, **extra))
    train, _, _ = data_preparation(cfg, load_dataset(cfg))
    return resolve_model(model)(cfg, train._dataset)


@pytest.mark.parametrize("extra,match", [
    ({"code_num": 1}, r"code_num \(codebook size\) must be >= 2, got 1"),
    ({"frq_rho": 0.0}, r"frq_rho must be > 0, got 0.0"),
    ({"gumbel_tau": 0.0}, r"gumbel_tau must be > 0, got 0.0"),
    ({"noise_mult": -0.1}, r"noise_mult must be >= 0, got -0.1"),
    ({"num_beams": 3}, r"num_beams \(3\) must be >= max\(topk\) \(10\)"),
    ({"assign_mode": "magic"}, r"assign_mode must be one of .*'magic'"),
    ({"gradient_path": "sideways"}, r"gradient_path must be one of .*'sideways'"),
    ({"tokenizer": "pq"}, r"tokenizer must be one of .*'pq'"),
])
def test_config_values_out_of_range(toy_root, extra, match):
    with pytest.raises(ValueError, match=match):
        _build("DIGER", toy_root, **extra)


def _emb_file(root, name, ids, emb):
    path = root / name
    np.savez(path, item_id=np.array(ids), embedding=emb)
    return str(path)


def test_nan_in_item_embeddings_names_the_row_and_item(toy_root):
    emb = np.random.default_rng(0).normal(size=(N_ITEMS, 16)).astype(np.float32)
    emb[3, 2] = np.nan
    path = _emb_file(toy_root, "nan.npz", [f"i{i}" for i in range(N_ITEMS)], emb)
    with pytest.raises(ValueError, match=r"nan.npz: non-finite values in row 3 \(item id 'i3'\)"):
        _build("TIGER", toy_root, item_emb_file=path)


def test_embedding_file_missing_items_names_the_first(toy_root):
    ids = [f"i{i}" for i in range(N_ITEMS) if i not in (5, 7)]
    path = _emb_file(toy_root, "short.npz", ids, np.zeros((len(ids), 16), np.float32))
    with pytest.raises(ValueError, match=rf"short.npz: 2 of the dataset's {N_ITEMS} items have no vector, "
                                         r"the first being item id 'i(5|7)'"):
        _build("TIGER", toy_root, item_emb_file=path)


def test_embedding_npy_without_ids_is_refused(toy_root):
    path = toy_root / "plain.npy"
    np.save(path, np.zeros((N_ITEMS + 1, 16), np.float32))
    with pytest.raises(ValueError, match=r"plain.npy: an embedding file must carry its item ids"):
        _build("TIGER", toy_root, item_emb_file=str(path))


def test_embedding_file_rows_follow_ids_not_positions(toy_root):
    """Rows in .item-file order, reversed order, or with extra ids: every item gets its own vector."""
    from diger.text import load_item_embedding_file

    rng = np.random.default_rng(1)
    vec = {f"i{i}": rng.normal(size=16).astype(np.float32) for i in range(N_ITEMS)}
    net = _build("TIGER", toy_root)
    internal = list(net.dataset_item_tokens[1:])  # RecBole's internal-id order, which users never see
    assert internal != [f"i{i}" for i in range(N_ITEMS)]  # so a positional file would be misaligned
    for order in ([f"i{i}" for i in range(N_ITEMS)], [f"i{i}" for i in reversed(range(N_ITEMS))]):
        extra = order + ["unused-item"]
        path = _emb_file(toy_root, "ordered.npz", extra, np.stack([vec.get(k, np.ones(16, np.float32)) for k in extra]))
        out = load_item_embedding_file(path, internal)
        assert out.shape == (N_ITEMS + 1, 16) and not out[0].any()
        for row, item in enumerate(internal, start=1):
            np.testing.assert_array_equal(out[row], vec[item])
    dup = _emb_file(toy_root, "dup.npz", ["i1", "i2", "i1"], np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match=r"dup.npz: item id 'i1' appears twice \(rows 0 and 2\)"):
        load_item_embedding_file(dup, internal)


def test_duplicate_item_ids_and_malformed_header(toy_root):
    from diger.text import ItemTextError, read_item_table

    dup = toy_root / "dup.item"
    dup.write_text("item_id:token\ttitle:token_seq\ni1\tA\ni2\tB\ni1\tC\n")
    with pytest.raises(ItemTextError, match=r"dup.item:4: duplicate item id 'i1'"):
        read_item_table(dup, "item_id", ["title"])
    bad = toy_root / "bad.item"
    bad.write_text("item_id\ttitle:token_seq\ni1\tA\n")
    with pytest.raises(ItemTextError, match=r"bad.item: header entry .item_id. is not field:type"):
        read_item_table(bad, "item_id", ["title"])


def test_suffix_overflow_is_an_error_not_a_clip(toy_root):
    from diger.tokenizer import SemanticIDCollisionError

    with pytest.raises(SemanticIDCollisionError, match="more than the suffix vocabulary"):
        _build("TIGER", toy_root, code_levels=1, code_num=2, suffix_size=2)


def test_interactions_naming_an_item_missing_from_the_item_file(toy_root):
    from diger.text import ItemTextError

    item_file = toy_root / "toy" / "toy.item"
    lines = item_file.read_text().splitlines()
    item_file.write_text("\n".join(l for l in lines if not l.startswith("i7\t")) + "\n")
    with pytest.raises(ItemTextError, match=r"1 item\(s\) have no text in .*toy.item.*: i7\b"):
        _build("TIGER", toy_root, item_emb_file=None)


def test_empty_dataset_after_filtering_is_a_clear_error(toy_root):
    with pytest.raises(ValueError, match=r"dataset 'toy' .*no interactions left after filtering "
                                         r"\(user_inter_num_interval='\[1000,inf\)'"):
        _build("TIGER", toy_root, user_inter_num_interval="[1000,inf)")


@pytest.mark.parametrize("counts,match", [({"nproc": 0}, r"nproc=0"), ({"nproc": 2, "world_size": 1}, r"world_size=1")])
def test_process_counts_out_of_range(counts, match):
    from diger.quick_start import process_counts

    with pytest.raises(ValueError, match=rf"need 1 <= nproc <= world_size, got .*{match}"):
        process_counts(counts)


def test_unknown_config_key_warns_with_the_closest_known_key(toy_root):
    """RecBole accepts any key; a typo (--epoch=1) would silently train the default number of epochs."""
    import warnings

    from diger.testing import small_config

    from diger.quick_start import make_config

    with pytest.warns(UserWarning, match=r"unknown config key 'epoch' \(override\).*did you mean 'epochs'"):
        make_config("DIGER", "toy", config_dict=small_config(toy_root, epoch=1))
    bad_file = toy_root / "typo.yaml"
    bad_file.write_text("num_beam: 5\n")
    with pytest.warns(UserWarning, match=r"'num_beam' \(config file .*typo.yaml\).*'num_beams'"):
        make_config("TIGER", "toy", [str(bad_file)], config_dict=small_config(toy_root))
    with warnings.catch_warnings(record=True) as seen:  # every shipped config is free of unknown keys
        warnings.simplefilter("always")
        for model, files in [("DIGER", ["ml-100k.yaml", "TIGER.yaml", "DIGER.yaml", "beauty_cpu.yaml"]),
                             ("SASRecBCE", ["SASRec-BCE.yaml"]), ("GRU4Rec", ["GRU4Rec.yaml"])]:
            make_config(model, "toy", [str(ROOT / "configs" / f) for f in files], small_config(toy_root))
        # RecBole's distributed keys live in its code, not its YAML files
        make_config("SASRec", "toy", None, small_config(toy_root, nproc=1, world_size=1, ip="localhost", port="5678",
                                                      offset=0))
    assert not [w for w in seen if "unknown config key" in str(w.message)]


@pytest.mark.parametrize("header,match", [
    ("user_id:token item_id:token timestamp:float", r"holds more than one ':' \(fields separated by spaces instead of tabs\?\)"),
    ("user_id:token\titem:id:token\ttimestamp:float", r"field 'item:id:token' holds more than one ':' \(':' inside a field name\?\)"),
    ("user_id:token\titem_id\ttimestamp:float", r"field 'item_id' is not name:type"),
    ("user_id:token\titem_id:tokn\ttimestamp:float", r"field 'item_id' has type 'tokn'"),
])
def test_atomic_header_with_wrong_separator_names_file_line_and_form(toy_root, header, match):
    """RecBole itself says `too many values to unpack`; we name the file, the header line and the expected form."""
    inter = toy_root / "toy" / "toy.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([header, *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=match) as err:
        _build("TIGER", toy_root)
    msg = str(err.value)
    assert "toy.inter: header line" in msg and "tab-separated name:type" in msg and repr(header) in msg


def test_unknown_backbone_is_refused_before_tokenizer_pretraining(toy_root, monkeypatch):
    from diger.models import tiger

    def _no_pretraining(*a, **k):
        raise AssertionError("pre-training started before the backbone was checked")

    import diger.artifact

    monkeypatch.setattr(diger.artifact, "resolve_stage0", _no_pretraining)
    monkeypatch.setattr(tiger, "resolve_stage0", _no_pretraining)
    from recbole.data import create_dataset, data_preparation

    from diger.quick_start import make_config, resolve_model
    from diger.testing import small_config

    with pytest.raises(ValueError, match="backbone must be one of"):  # diger run's path: at config time
        make_config("TIGER", "toy", None, small_config(toy_root, backbone="t5x"))
    cfg = make_config("TIGER", "toy", None, small_config(toy_root))
    cfg["backbone"] = "t5x"  # a model built by RecBole directly checks in its constructor, before stage 0
    train, _, _ = data_preparation(cfg, create_dataset(cfg))
    with pytest.raises(ValueError, match="backbone must be one of"):
        resolve_model("TIGER")(cfg, train._dataset)
