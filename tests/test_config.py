"""Config: defaults, precedence of file < key=value < CLI options, type checks, run hash."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lotto.config import check, config_hash, identity, load_config, load_defaults, to_yaml
from lotto.errors import LottoError


def test_defaults_load_and_match_the_paper_lenet_protocol() -> None:
    cfg = load_config("lottery")
    assert cfg == load_defaults("lottery")
    assert cfg.model.name == "lenet_300_100"
    assert cfg.lottery.prune_rate == 0.2
    assert cfg.lottery.output_rate_factor == 0.5
    assert cfg.train.optimizer == "adam" and cfg.train.lr == pytest.approx(1.2e-3)
    assert cfg.train.batch_size == 60
    assert cfg.run.name is None


def test_unknown_command_is_a_user_error() -> None:
    with pytest.raises(LottoError, match="nope"):
        load_config("nope")


def test_precedence_file_then_dotlist_then_options(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  lr: 0.5\n  batch_size: 7\nlottery:\n  rounds: 3\n  seeds: 2\n")
    cfg = load_config(
        "lottery",
        user,
        ["train.lr=0.25", "lottery.rounds=4"],
        {"lottery.rounds": 5, "lottery.seeds": None, "seed": 9},
    )
    assert cfg.train.batch_size == 7  # file only
    assert cfg.train.lr == 0.25  # dotlist over file
    assert cfg.lottery.rounds == 5  # option over dotlist
    assert cfg.lottery.seeds == 2  # an unset option (None) leaves the file's value
    assert cfg.seed == 9
    assert cfg.train.optimizer == "adam"  # default untouched


def test_later_dotlist_item_wins() -> None:
    cfg = load_config("lottery", overrides=["lottery.rounds=3", "lottery.rounds=4"])
    assert cfg.lottery.rounds == 4


def test_list_override() -> None:
    assert list(load_config("lottery", overrides=["lottery.controls=[]"]).lottery.controls) == []
    cfg = load_config("lottery", overrides=["lottery.controls=[reinit]"])
    assert list(cfg.lottery.controls) == ["reinit"]


@pytest.mark.parametrize(
    "override,key",
    [
        ("nope=1", "nope"),
        ("train.nope=1", "train.nope"),
        ("lottery.prune=0.1", "lottery.prune"),
    ],
)
def test_unknown_key_is_named(override: str, key: str) -> None:
    with pytest.raises(LottoError, match=f"unknown config key {key}"):
        load_config("lottery", overrides=[override])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=0.1", "unknown config key train.lrr; did you mean train.lr?"),
        ("trian.lr=0.1", "unknown config key trian; did you mean train?"),
        ("lr=0.1", "unknown config key lr; did you mean train.lr?"),
        ("train.prune_rate=0.1", "unknown config key train.prune_rate; did you mean "
                                 "lottery.prune_rate?"),
        ("zzz=1", "unknown config key zzz"),
    ],
)
def test_unknown_key_suggests_the_closest(override: str, message: str) -> None:
    with pytest.raises(LottoError) as info:
        load_config("lottery", overrides=[override])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.lr=abc", "train.lr"),
        ("lottery.rounds=2.5", "lottery.rounds"),
        ("lottery.rounds=abc", "lottery.rounds"),
        ("train.amp=3", "train.amp"),
        ("lottery.controls=reinit", "lottery.controls"),
        ("train=3", "train"),
        ("lottery.rounds=true", "lottery.rounds"),
    ],
)
def test_wrong_type_is_named(override: str, key: str) -> None:
    with pytest.raises(LottoError, match=f"config key {key}"):
        load_config("lottery", overrides=[override])


def test_wrong_type_in_file_is_named(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  batch_size: big\n")
    with pytest.raises(LottoError, match="train.batch_size"):
        load_config("lottery", user)


def test_override_without_equals() -> None:
    with pytest.raises(LottoError, match="key=value"):
        load_config("lottery", overrides=["train.lr"])


def test_bad_yaml_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n  batch_size: 3\n")
    with pytest.raises(LottoError, match=r"bad\.yaml does not parse as YAML \(line \d+\)"):
        load_config("lottery", bad)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(LottoError, match="mapping"):
        load_config("lottery", bad)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(LottoError, match="cannot read config file"):
        load_config("lottery", tmp_path / "absent.yaml")


def test_empty_config_file_is_no_change(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config("lottery", empty) == load_config("lottery")


def test_int_accepted_for_float_keys_and_stored_as_float() -> None:
    cfg = load_config("lottery", overrides=["train.lr=1", "lottery.prune_rate=0"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.lottery.prune_rate, float)
    assert "lr: 1.0" in to_yaml(cfg)


@pytest.mark.parametrize(
    "text,value", [("1e-3", 1e-3), ("3e-4", 3e-4), ("1e30", 1e30), ("2.5E+2", 250.0), ("0.5", 0.5)]
)
def test_scientific_notation_is_a_float(text: str, value: float, tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) would read 1e-3 as a string; configs follow YAML 1.2 here
    assert load_config("lottery", overrides=[f"train.lr={text}"]).train.lr == value
    user = tmp_path / "u.yaml"
    user.write_text(f"train:\n  lr: {text}\n")
    assert load_config("lottery", user).train.lr == value


def test_iterations_as_plain_int_accepted() -> None:
    from lotto.train import parse_step

    cfg = load_config("lottery", overrides=["train.iterations=50000"])
    assert parse_step(cfg.train.iterations, 100) == 50000
    cfg = load_config("lottery", overrides=["train.iterations=3ep"])
    assert parse_step(cfg.train.iterations, 100) == 300


def test_int_for_string_key_becomes_string() -> None:
    cfg = load_config("lottery", overrides=["device=0", "lottery.rewind=5"])
    assert cfg.device == "0" and cfg.lottery.rewind == "5"


def test_null_default_accepts_any_value() -> None:
    cfg = load_config("lottery", overrides=["data.subset=100", "data.root=/x", "run.name=abc"])
    assert cfg.data.subset == 100 and cfg.data.root == "/x" and cfg.run.name == "abc"


def test_hash_ignores_placement_but_not_settings() -> None:
    base = load_config("lottery")
    placed = load_config("lottery", overrides=["run.name=x", "run.runs_dir=/elsewhere"])
    assert config_hash(base, "lottery") == config_hash(placed, "lottery")
    assert identity(base) == identity(placed)
    changed = load_config("lottery", overrides=["train.lr=0.01"])
    assert config_hash(changed, "lottery") != config_hash(base, "lottery")
    assert len(config_hash(base, "lottery")) == 10


def test_hash_depends_only_on_the_resolved_config(tmp_path: Path) -> None:
    user = tmp_path / "u.yaml"
    user.write_text("train:\n  lr: 0.01\n")
    a = load_config("lottery", user)
    b = load_config("lottery", overrides=["train.lr=0.01"])
    c = load_config("lottery", overrides=["train.lr=0.01", "lottery.rounds=15"])  # a default
    assert config_hash(a, "lottery") == config_hash(b, "lottery") == config_hash(c, "lottery")


def test_saved_config_reruns_as_is(tmp_path: Path) -> None:
    cfg = load_config(
        "lottery",
        overrides=[
            "train.lr=1",
            "train.iterations=50000",
            "lottery.controls=[]",
            "data.subset=10",
            "lottery.prune_rate=3e-1",
        ],
        options={"run.name": "mine", "seed": 3},
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    again = load_config("lottery", saved)
    assert again == cfg
    assert config_hash(again, "lottery") == config_hash(cfg, "lottery")
    assert again.run.name == "mine"
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_check_names_key() -> None:
    check(True, "a.b", "fine")
    with pytest.raises(LottoError, match="config key a.b: must be odd"):
        check(False, "a.b", "must be odd")


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.val_size=abc", "data.val_size"),
        ("data.val_size=0.5", "data.val_size"),
        ("data.image_size=[1]", "data.image_size"),
        ("data.subset=many", "data.subset"),
        ("data.augment=3", "data.augment"),
        ("data.stream=maybe", "data.stream"),
        ("data.workers=two", "data.workers"),
    ],
)
def test_automatic_data_keys_still_have_a_type(override: str, key: str) -> None:
    """A null default means "automatic", not "anything": a wrong type names the key."""
    with pytest.raises(LottoError, match=f"config key {key}: expected"):
        load_config("lottery", overrides=[override])
    for command in ("rethink", "build-v3"):
        with pytest.raises(LottoError, match=f"config key {key}"):
            load_config(command, overrides=[override])


def test_automatic_data_keys_take_null_or_their_type() -> None:
    cfg = load_config(
        "lottery", overrides=["data.val_size=100", "data.stream=true", "data.augment=null"]
    )
    assert cfg.data.val_size == 100 and cfg.data.stream is True and cfg.data.augment is None


def test_data_workers_is_placement() -> None:
    """How many loader processes decode images changes no number: same run, same hash."""
    base = load_config("lottery")
    more = load_config("lottery", overrides=["data.workers=3"])
    assert identity(base) == identity(more)
    assert config_hash(base, "lottery") == config_hash(more, "lottery")
    assert identity(base)["data"]["val_size"] is None  # only that key is left out


def test_automatic_keys_take_null_where_a_command_sets_a_number() -> None:
    """netadapt and search default to a data subset; null still means "all" there."""
    for command in ("netadapt", "search"):
        cfg = load_config(command, overrides=["data.subset=null", "data.val_size=null"])
        assert cfg.data.subset is None and cfg.data.val_size is None
    with pytest.raises(LottoError, match="config key train.lr"):
        load_config("netadapt", overrides=["train.lr=null"])
